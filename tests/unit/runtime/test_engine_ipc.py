"""The front-end <-> engine process wire, and the engine server and client over a real socket
in one process (fake engine): results, every refusal, and readiness."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
import torch

from sas_runtime.batcher import (
    Batcher,
    BatcherClosedError,
    DeadlineExceededError,
    QueueFullError,
    RateLimitedError,
)
from sas_runtime.config import BatchingConfig, RateLimitConfig, RuntimeConfig
from sas_runtime.engine import AttentionInput, EncodedText
from sas_runtime.engine_client import EngineClient, RemoteEngine
from sas_runtime.engine_ipc import (
    EngineUnavailableError,
    MessageProtocol,
    error_outcome,
    pack,
    raise_outcome,
    unpack,
    write_message,
)
from sas_runtime.engine_server import EngineServer
from tests.fake_engine import REFUSED_WORD, FakeEngine, eventually


def _roundtrip(message: object) -> Any:
    return unpack([bytes(frame) for frame in pack(message)])


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float32, torch.int32], ids=str
)
@pytest.mark.parametrize("elements", [30, 70_000], ids=["small", "large"])
def test_tensors_cross_with_dtype_shape_and_values(dtype: torch.dtype, elements: int) -> None:
    tensor = (torch.arange(elements).reshape(2, -1, 5) % 251 - 7).to(dtype)
    frames = pack(("attend", tensor))
    large = tensor.numel() * tensor.element_size() >= 64 * 1024
    assert len(frames) == (2 if large else 1), "only large tensors travel as their own frame"
    (name, back) = _roundtrip(("attend", tensor))
    assert name == "attend"
    assert back.dtype == dtype
    assert back.shape == tensor.shape
    assert torch.equal(back, tensor)


def test_encoded_texts_and_embedding_rows_cross_in_one_frame() -> None:
    texts = [EncodedText((101, 7, 102)), EncodedText((101, 102), truncated=True)]
    rows = np.arange(2 * 384, dtype=np.float32).reshape(2, 384)
    message = [(1, "embed", texts, 1.5), (2, "ok", rows)]
    assert len(pack(message)) == 1
    back = _roundtrip(message)
    assert back[0] == (1, "embed", texts, 1.5)
    assert isinstance(back[0][2][0], EncodedText)
    assert np.array_equal(back[1][2], rows)


def test_strided_empty_and_scalar_tensors_cross_intact() -> None:
    strided = torch.randn(4, 6).t()
    empty = torch.zeros(0, 3, dtype=torch.bfloat16)
    scalar = torch.tensor(2.5)
    back = _roundtrip([strided, empty, scalar])
    assert isinstance(back, list)
    assert torch.equal(back[0], strided)
    assert back[1].shape == (0, 3)
    assert back[1].dtype == torch.bfloat16
    assert back[2].shape == ()
    assert back[2].item() == 2.5


def test_attention_inputs_and_arrays_cross() -> None:
    item = AttentionInput(
        q=torch.randn(1, 2, 4, 8), k=torch.randn(1, 1, 4, 8), v=torch.randn(1, 1, 4, 8)
    )
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    back_item, back_array = _roundtrip((item, array))
    assert torch.equal(back_item.k, item.k)
    assert back_item.pattern is None
    np.testing.assert_array_equal(back_array, array)


class _FakeTransport:
    """What MessageProtocol needs of a transport when the test feeds it bytes by hand."""

    def is_closing(self) -> bool:
        return False


def _feed(protocol: MessageProtocol, data: bytes, chunk: int) -> list[int]:
    """Deliver `data` as the event loop would: into the buffers the protocol hands out, at most
    `chunk` bytes per read. Returns the address of each buffer it wrote into."""
    position = 0
    addresses = []
    while position < len(data):
        buffer = protocol.get_buffer(-1)
        addresses.append(np.frombuffer(buffer, dtype=np.uint8).ctypes.data)
        size = min(len(buffer), chunk, len(data) - position)
        buffer[:size] = data[position : position + size]
        protocol.buffer_updated(size)
        position += size
    return addresses


def _wire(message: object) -> bytes:
    sent: list[bytes] = []

    class Collect:
        def writelines(self, parts: list[Any]) -> None:
            sent.extend(bytes(part) for part in parts)

    write_message(Collect(), message)  # type: ignore[arg-type]
    return b"".join(sent)


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 30], ids=lambda c: f"chunk{c}")
def test_the_protocol_reads_messages_split_and_joined_anyhow(chunk: int) -> None:
    large = torch.arange(200_000, dtype=torch.float32).reshape(2, -1)
    messages: list[object] = [
        [(1, "ok", large)],
        [(2, "embed", [EncodedText((101, 102))], 1.0)],
        [(3, "ok", torch.zeros(0, 4))],
    ]
    received: list[Any] = []
    protocol = MessageProtocol(lambda _, message: received.append(message))
    protocol.connection_made(_FakeTransport())  # type: ignore[arg-type]
    _feed(protocol, b"".join(_wire(m) for m in messages), chunk)
    assert len(received) == 3
    assert torch.equal(received[0][0][2], large)
    assert received[1] == messages[1]
    assert received[2][0][2].shape == (0, 4)


def test_a_large_tensor_takes_over_its_frame_without_a_copy() -> None:
    received: list[Any] = []
    protocol = MessageProtocol(lambda _, message: received.append(message))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it wraps read-only memory
        addresses = _feed(protocol, _wire(torch.ones(1 << 20, dtype=torch.bfloat16)), 1 << 30)
    (tensor,) = received
    start, end = tensor.data_ptr(), tensor.data_ptr() + tensor.nbytes
    assert any(start < address < end for address in addresses), "read straight into the tensor"
    tensor[0] = 2
    assert tensor[:2].tolist() == [2.0, 1.0]


@pytest.mark.parametrize(
    "error",
    [
        QueueFullError("the queue holds 8 requests"),
        DeadlineExceededError("deadline passed in the queue"),
        BatcherClosedError("the runtime is shutting down"),
        ValueError("input 0 has token ids outside [0, 10)"),
        EngineUnavailableError("the engine is warming up"),
        RateLimitedError("over the rate limit of 5 requests/s", retry_after=0.25),
    ],
    ids=lambda e: type(e).__name__,
)
def test_refusals_are_raised_again_as_the_same_error(error: Exception) -> None:
    outcome = error_outcome(error)
    assert outcome is not None
    with pytest.raises(type(error), match=re.escape(str(error))):
        raise_outcome(*_roundtrip(outcome))
    if isinstance(error, RateLimitedError):
        with pytest.raises(RateLimitedError) as raised:
            raise_outcome(*outcome)
        assert raised.value.retry_after == 0.25


def test_an_engine_failure_is_not_a_refusal() -> None:
    assert error_outcome(RuntimeError("CUDA error: an illegal memory access")) is None
    with pytest.raises(RuntimeError, match="the engine failed on this request: boom"):
        raise_outcome("failed", "boom")


@pytest.fixture
def socket_path() -> Iterator[str]:
    """A socket path short enough for AF_UNIX (108 bytes), whatever pytest's tmp_path is."""
    directory = tempfile.mkdtemp(prefix="sas-")
    yield os.path.join(directory, "engine.sock")
    shutil.rmtree(directory, ignore_errors=True)


class _Pair:
    """An EngineServer serving a FakeEngine and an EngineClient connected to it; setting
    `stop` stops the server."""

    def __init__(
        self, server: EngineServer, client: EngineClient, engine: FakeEngine, stop: asyncio.Event
    ) -> None:
        self.server = server
        self.client = client
        self.engine = engine
        self.stop = stop


def _config(**batching: int) -> RuntimeConfig:
    return RuntimeConfig(
        batching=BatchingConfig(**batching),
        rate_limit=RateLimitConfig(requests_per_second=1000, burst=1000),
    )


async def _serve(address: str, engine: FakeEngine, config: RuntimeConfig) -> AsyncIterator[_Pair]:
    server = EngineServer(config, engine, address)
    stop = asyncio.Event()
    serving = asyncio.create_task(server.serve(stop))
    client = EngineClient(address)
    await asyncio.wait_for(client.start(), 10)
    try:
        yield _Pair(server, client, engine, stop)
    finally:
        await client.stop()
        stop.set()
        await serving


@pytest.fixture
async def pair(socket_path: str) -> AsyncIterator[_Pair]:
    async for served in _serve(socket_path, FakeEngine(), _config()):
        yield served


def _deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_embeddings_and_attention_come_back_as_the_engine_made_them(pair: _Pair) -> None:
    texts = pair.engine.encode(["hello world", "a b c"])
    vectors = await pair.client.embed(texts, deadline=_deadline())
    np.testing.assert_allclose(vectors, pair.engine.embed(texts))
    item = AttentionInput(
        q=torch.randn(1, 2, 16, 8).to(torch.bfloat16),
        k=torch.randn(1, 2, 16, 8).to(torch.bfloat16),
        v=torch.randn(1, 2, 16, 8).to(torch.bfloat16),
    )
    output = await pair.client.attend(item, deadline=_deadline())
    assert torch.equal(output, pair.engine.attend([item])[0])
    remote = RemoteEngine(pair.client, pair.engine)
    assert remote.info == pair.engine.info
    assert remote.encode(["hello world"]) == texts[:1]


async def test_megabyte_tensors_cross_the_socket_both_ways(pair: _Pair) -> None:
    generator = torch.Generator().manual_seed(3)
    q, k, v = (
        torch.randn(1, 16, 1024, 64, generator=generator).to(torch.bfloat16) for _ in range(3)
    )
    item = AttentionInput(q=q, k=k, v=v)  # 2 MB each way per tensor, read in place
    outputs = await asyncio.gather(
        *(pair.client.attend(item, deadline=_deadline(30)) for _ in range(3))
    )
    expected = pair.engine.attend([item])[0]
    for output in outputs:
        assert torch.equal(output, expected)


async def test_requests_of_both_sides_share_one_batch(pair: _Pair) -> None:
    texts = pair.engine.encode([f"text {i}" for i in range(6)])
    await asyncio.gather(*(pair.client.embed([t], deadline=_deadline()) for t in texts))
    assert sum(size for kind, size in pair.engine.batches if kind == "embed") == 6
    assert len(pair.engine.batches) < 6, "the engine process batched the requests together"


async def test_input_the_engine_refuses_is_a_value_error(pair: _Pair) -> None:
    (text,) = pair.engine.encode([f"please {REFUSED_WORD}"])
    with pytest.raises(ValueError, match="the fake engine refuses"):
        await pair.client.embed([text], deadline=_deadline())


async def test_a_full_queue_and_the_rate_limit_hold_across_clients(socket_path: str) -> None:
    gate = threading.Event()
    config = _config(max_queue_depth=2, max_batch_size=1, window_microseconds=0).model_copy(
        update={"rate_limit": RateLimitConfig(requests_per_second=0.5, burst=3)}
    )
    async for served in _serve(socket_path, FakeEngine(gate=gate), config):
        texts = [EncodedText((1, 5, 2))]
        first = [
            asyncio.create_task(served.client.embed(texts, deadline=_deadline())) for _ in range(2)
        ]
        await asyncio.sleep(0.2)
        for _ in range(3):
            with pytest.raises(QueueFullError):
                await served.client.embed(texts, deadline=_deadline())
        gate.set()
        assert [len(v) for v in await asyncio.gather(*first)] == [1, 1]
        # The requests the full queue refused spent no token: the burst's third is left.
        assert len(await served.client.embed(texts, deadline=_deadline())) == 1
        with pytest.raises(RateLimitedError) as limited:
            await served.client.embed(texts, deadline=_deadline())
        assert limited.value.retry_after > 0


async def test_the_deadline_is_the_front_ends(socket_path: str) -> None:
    gate = threading.Event()
    async for served in _serve(socket_path, FakeEngine(gate=gate), _config()):
        try:
            with pytest.raises(DeadlineExceededError):
                await served.client.embed([EncodedText((1, 5, 2))], deadline=_deadline(0.1))
        finally:
            gate.set()


async def test_the_client_waits_for_the_socket_and_the_warm_up(socket_path: str) -> None:
    server = EngineServer(_config(), FakeEngine(), socket_path)
    client = EngineClient(socket_path)
    starting = asyncio.create_task(client.start())
    try:
        await asyncio.sleep(0.3)
        await server.listen()
        asked: list[str] = []
        dispatch = server._dispatch

        def recording(*request: Any) -> None:
            asked.append(request[2])
            dispatch(*request)

        server._dispatch = recording  # type: ignore[method-assign,assignment]
        await asyncio.sleep(0.5)
        assert not starting.done(), "the client waits until the engine is warm"
        assert 1 <= asked.count("hello") <= 5, "a warming engine is asked every 0.2 s"
        with pytest.raises(EngineUnavailableError):
            RemoteEngine(client, FakeEngine()).info  # noqa: B018
        await server.batcher.start()
        server.ready = True
        await asyncio.wait_for(starting, 5)
        assert client.info is not None
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await client.stop()
        await server.batcher.stop()
        await server.close()


async def test_a_vanished_engine_fails_what_waits_and_stops_the_front_end(
    socket_path: str,
) -> None:
    gate = threading.Event()
    async for served in _serve(socket_path, FakeEngine(gate=gate), _config()):
        lost = asyncio.Event()
        served.client._on_lost = lost.set
        waiting = asyncio.create_task(
            served.client.embed([EncodedText((1, 5, 2))], deadline=_deadline())
        )
        await asyncio.sleep(0.2)
        await served.server.close()
        try:
            with pytest.raises(EngineUnavailableError, match="the engine process is gone"):
                await waiting
            await asyncio.wait_for(lost.wait(), 5)
            with pytest.raises(EngineUnavailableError, match="not connected"):
                await served.client.embed([EncodedText((1, 5, 2))], deadline=_deadline())
        finally:
            gate.set()


async def _until_pending(batcher: Batcher, count: int) -> None:
    await eventually(lambda: batcher.pending == count)


async def test_work_queued_when_the_engine_stops_is_answered_closed(socket_path: str) -> None:
    gate = threading.Event()
    async for served in _serve(socket_path, FakeEngine(gate=gate), _config(maxBatchSize=1)):
        client, batcher = served.client, served.server.batcher
        running = asyncio.create_task(client.embed([EncodedText((1, 5, 2))], deadline=_deadline()))
        try:
            await _until_pending(batcher, 1)
            queued = asyncio.create_task(
                client.embed([EncodedText((1, 6, 2))], deadline=_deadline())
            )
            await _until_pending(batcher, 2)
            served.stop.set()
            with pytest.raises(BatcherClosedError):
                await queued
        finally:
            gate.set()
            await asyncio.gather(running, return_exceptions=True)


async def test_a_stopped_client_refuses_and_fails_what_waits(pair: _Pair) -> None:
    await pair.client.stop()
    with pytest.raises(BatcherClosedError):
        await pair.client.embed([EncodedText((1, 2))], deadline=_deadline())
