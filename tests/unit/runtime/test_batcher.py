from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
import torch

from sas_runtime.batcher import (
    Batcher,
    BatcherClosedError,
    DeadlineExceededError,
    QueueFullError,
    RateLimitedError,
    sequence_bucket,
)
from sas_runtime.config import BatchingConfig, PatternConfig, PatternType
from sas_runtime.engine import AttentionInput
from sas_runtime.metrics import RuntimeMetrics
from sas_runtime.rate_limit import TokenBucket
from tests.fake_engine import REFUSED_WORD, FakeEngine, eventually


def _texts(words: int) -> str:
    return " ".join(f"w{i}" for i in range(words))


def _deadline(seconds: float = 10.0) -> float:
    return asyncio.get_running_loop().time() + seconds


@asynccontextmanager
async def running(engine: FakeEngine, **batching: int) -> AsyncIterator[Batcher]:
    batcher = Batcher(engine, BatchingConfig(**batching), RuntimeMetrics())
    await batcher.start()
    try:
        yield batcher
    finally:
        if engine.gate is not None:
            engine.gate.set()
        await batcher.stop()


@pytest.mark.parametrize(
    ("length", "bucket"), [(0, 8), (1, 8), (8, 8), (9, 16), (16, 16), (17, 32), (200, 256)]
)
def test_sequence_bucket_is_the_next_power_of_two_from_eight(length: int, bucket: int) -> None:
    assert sequence_bucket(length) == bucket


async def test_results_do_not_depend_on_the_batch() -> None:
    engine = FakeEngine(max_length=64)
    texts = [_texts(n) for n in (1, 2, 3, 30, 31, 5)]
    async with running(engine, window_microseconds=20_000) as batcher:
        results = await asyncio.gather(
            *(batcher.embed(engine.encode([t]), deadline=_deadline()) for t in texts)
        )
    for text, result in zip(texts, results, strict=True):
        np.testing.assert_array_equal(result, engine.embed(engine.encode([text])))


async def test_a_batch_holds_one_sequence_bucket_only() -> None:
    engine = FakeEngine(max_length=64)
    lengths = [1, 30, 2, 29, 3, 60]
    async with running(engine, window_microseconds=20_000) as batcher:
        await asyncio.gather(
            *(batcher.embed(engine.encode([_texts(n)]), deadline=_deadline()) for n in lengths)
        )
    assert sum(len(b) for b in engine.batch_lengths) == len(lengths)
    for batch in engine.batch_lengths:
        assert len({sequence_bucket(n) for n in batch}) == 1
    assert len(engine.batch_lengths) == 3


async def test_batches_respect_max_batch_size_and_max_tokens() -> None:
    engine = FakeEngine()
    async with running(
        engine, window_microseconds=20_000, max_batch_size=4, max_tokens=24
    ) as batcher:
        await batcher.embed(engine.encode([_texts(2)] * 10), deadline=_deadline())
    sizes = [len(b) for b in engine.batch_lengths]
    assert sum(sizes) == 10
    assert max(sizes) == 3  # three bucket-8 texts fit in 24 tokens; four would not


async def test_earliest_deadline_goes_first() -> None:
    engine = FakeEngine(max_length=64, gate=threading.Event())
    async with running(engine, window_microseconds=0) as batcher:
        first = asyncio.create_task(batcher.embed(engine.encode(["x"]), deadline=_deadline()))
        await eventually(lambda: bool(engine.batches))
        late = asyncio.create_task(
            batcher.embed(engine.encode([_texts(30)]), deadline=_deadline(20))
        )
        soon = asyncio.create_task(
            batcher.embed(engine.encode([_texts(12)]), deadline=_deadline(5))
        )
        await eventually(lambda: batcher.pending == 3)
        assert engine.gate is not None
        engine.gate.set()
        await asyncio.gather(first, late, soon)
    assert [max(b) for b in engine.batch_lengths] == [3, 14, 32]


async def test_a_full_queue_refuses_new_requests() -> None:
    engine = FakeEngine(gate=threading.Event())
    async with running(engine, max_batch_size=1, max_queue_depth=2) as batcher:
        admitted = [
            asyncio.create_task(batcher.embed(engine.encode(["a"]), deadline=_deadline()))
            for _ in range(2)
        ]
        await eventually(lambda: batcher.pending == 2)
        with pytest.raises(QueueFullError, match="maxQueueDepth"):
            await batcher.embed(engine.encode(["b"]), deadline=_deadline())
        assert engine.gate is not None
        engine.gate.set()
        results = await asyncio.gather(*admitted)
    assert all(r.shape == (1, engine.dim) for r in results)
    assert batcher.pending == 0


async def test_a_request_the_full_queue_refuses_spends_no_rate_limit_token() -> None:
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    bucket = TokenBucket(rate=0.001, burst=2)
    batcher = Batcher(
        engine,
        BatchingConfig(max_batch_size=1, max_queue_depth=1),
        RuntimeMetrics(),
        rate_limit=bucket,
    )
    await batcher.start()
    try:
        admitted = asyncio.create_task(batcher.embed(engine.encode(["a"]), deadline=_deadline()))
        await eventually(lambda: batcher.pending == 1)
        for _ in range(3):
            with pytest.raises(QueueFullError):
                await batcher.embed(engine.encode(["b"]), deadline=_deadline())
        gate.set()
        await admitted
        await batcher.embed(engine.encode(["c"]), deadline=_deadline())
        with pytest.raises(RateLimitedError):
            await batcher.embed(engine.encode(["d"]), deadline=_deadline())
    finally:
        gate.set()
        await batcher.stop()


async def test_a_request_past_its_deadline_is_answered_with_deadline_exceeded() -> None:
    engine = FakeEngine(gate=threading.Event())
    async with running(engine, max_batch_size=1) as batcher:
        blocker = asyncio.create_task(batcher.embed(engine.encode(["a"]), deadline=_deadline()))
        await eventually(lambda: bool(engine.batches))
        with pytest.raises(DeadlineExceededError):
            await batcher.embed(engine.encode(["late"]), deadline=_deadline(0.05))
        assert engine.gate is not None
        engine.gate.set()
        await blocker
        after = await batcher.embed(engine.encode(["still serving"]), deadline=_deadline())
    assert after.shape == (1, engine.dim)
    assert engine.batches == [("embed", 1), ("embed", 1)]  # the expired text never ran


async def test_input_the_engine_refuses_fails_only_its_own_request() -> None:
    engine = FakeEngine()
    async with running(engine, window_microseconds=50_000) as batcher:
        good = [batcher.embed(engine.encode([f"fine {i}"]), deadline=_deadline()) for i in range(3)]
        bad = batcher.embed(engine.encode([f"{REFUSED_WORD} x"]), deadline=_deadline())
        results = await asyncio.gather(*good, bad, return_exceptions=True)
    assert [type(r) for r in results[:3]] == [np.ndarray] * 3
    assert isinstance(results[3], ValueError)
    assert engine.batches[0] == ("embed", 4)


class _HoldsLoneRuns(FakeEngine):
    """Runs batches of several at once and holds every batch of one until `hold` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = threading.Event()

    def _forward(self, kind: str, size: int) -> None:
        super()._forward(kind, size)
        if size == 1:
            self.hold.wait(timeout=30)


async def test_stop_while_a_refused_batch_reruns_answers_every_request() -> None:
    """After the engine refuses a batch, its requests rerun one by one; a stop then must answer
    those still waiting their turn too (they have left the queue)."""
    engine = _HoldsLoneRuns()
    batcher = Batcher(engine, BatchingConfig(window_microseconds=50_000), RuntimeMetrics())
    await batcher.start()
    texts = [f"fine {i}" for i in range(3)] + [f"{REFUSED_WORD} x"]
    tasks = [
        asyncio.create_task(batcher.embed(engine.encode([t]), deadline=_deadline())) for t in texts
    ]
    await eventually(lambda: ("embed", 1) in engine.batches)  # the first rerun, held
    await batcher.stop()
    try:
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=5)
    finally:
        engine.hold.set()
    assert engine.batches == [("embed", 4), ("embed", 1)]
    assert all(isinstance(r, BatcherClosedError) for r in results)


async def test_attention_problems_of_one_shape_share_a_batch() -> None:
    engine = FakeEngine()
    items = [
        AttentionInput(torch.randn(1, 2, 8, 4), torch.randn(1, 2, 8, 4), torch.randn(1, 2, 8, 4))
        for _ in range(3)
    ]
    causal = PatternConfig(type=PatternType.CAUSAL)
    items.append(AttentionInput(items[0].q, items[0].k, items[0].v, pattern=causal))
    async with running(engine, window_microseconds=50_000) as batcher:
        outputs = await asyncio.gather(*(batcher.attend(i, deadline=_deadline()) for i in items))
    assert sorted(engine.batches) == [("attend", 1), ("attend", 3)]
    for item, output in zip(items, outputs, strict=True):
        expected = torch.nn.functional.scaled_dot_product_attention(
            item.q, item.k, item.v, is_causal=item.pattern is causal
        )
        torch.testing.assert_close(output, expected)


async def test_stop_answers_queued_and_running_work() -> None:
    engine = FakeEngine(gate=threading.Event())
    batcher = Batcher(engine, BatchingConfig(max_batch_size=1), RuntimeMetrics())
    await batcher.start()
    tasks = [
        asyncio.create_task(batcher.embed(engine.encode([f"t{i}"]), deadline=_deadline()))
        for i in range(3)
    ]
    await eventually(lambda: bool(engine.batches))
    await batcher.stop()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert engine.gate is not None
    engine.gate.set()
    assert all(isinstance(r, BatcherClosedError) for r in results)
    with pytest.raises(BatcherClosedError):
        await batcher.embed(engine.encode(["after"]), deadline=_deadline())


async def test_metrics_count_batches_tokens_and_queue_depth() -> None:
    engine = FakeEngine()
    metrics = RuntimeMetrics()
    batcher = Batcher(engine, BatchingConfig(window_microseconds=20_000), metrics)
    await batcher.start()
    try:
        await batcher.embed(engine.encode(["one two", "three"]), deadline=_deadline())
    finally:
        await batcher.stop()
    sample = metrics.registry.get_sample_value
    assert sample("sas_batch_size_count", {"kind": "embed"}) == 1
    assert sample("sas_batch_size_sum", {"kind": "embed"}) == 2
    assert sample("sas_tokens_total", {"kind": "embed"}) == 4 + 3
    assert sample("sas_queue_wait_seconds_count", {"kind": "embed"}) == 2
    assert sample("sas_queue_depth") == 0
    assert engine.warmed


async def test_a_lone_request_does_not_wait_for_the_window() -> None:
    engine = FakeEngine()
    async with running(engine, window_microseconds=500_000) as batcher:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await batcher.embed(engine.encode(["alone"]), deadline=_deadline())
        alone = loop.time() - started
        started = loop.time()
        await asyncio.gather(
            *(
                batcher.embed(engine.encode([f"together {i}"]), deadline=_deadline())
                for i in range(2)
            )
        )
        together = loop.time() - started
    assert alone < 0.25 <= together  # two admitted at once wait for the 0.5 s window
    assert engine.batches == [("embed", 1), ("embed", 2)]


async def test_a_request_queued_alone_behind_a_batch_does_not_wait_for_the_window() -> None:
    engine = FakeEngine(gate=threading.Event())
    async with running(engine, window_microseconds=500_000) as batcher:
        loop = asyncio.get_running_loop()
        first = asyncio.create_task(batcher.embed(engine.encode(["first"]), deadline=_deadline()))
        await eventually(lambda: bool(engine.batches))
        second = asyncio.create_task(batcher.embed(engine.encode(["second"]), deadline=_deadline()))
        await eventually(lambda: batcher.pending == 2)
        released = loop.time()
        assert engine.gate is not None
        engine.gate.set()
        await asyncio.gather(first, second)
        assert loop.time() - released < 0.25
    assert engine.batches == [("embed", 1), ("embed", 1)]
