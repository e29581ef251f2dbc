"""Continuous batcher: gathers requests into engine batches by sequence-length bucket, serves
the earliest deadline first, and runs the engine in one worker thread so the event loop stays free."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import nvtx

from sas_runtime.engine import AttentionInput, EncodedText

if TYPE_CHECKING:
    from collections.abc import Hashable, Sequence

    import torch

    from sas_runtime.config import BatchingConfig
    from sas_runtime.engine import Engine
    from sas_runtime.metrics import RuntimeMetrics
    from sas_runtime.rate_limit import TokenBucket

__all__ = [
    "Batcher",
    "BatcherClosedError",
    "DeadlineExceededError",
    "QueueFullError",
    "RateLimitedError",
    "WorkQueue",
    "sequence_bucket",
]

_WorkKind = Literal["embed", "attend"]
_TIMER_RESOLUTION = 0.001
"""Seconds: the event loop's timers fire no more precisely than this."""
_SMALLEST_BUCKET = 8


class QueueFullError(Exception):
    """The queue holds `maxQueueDepth` requests already; the caller should retry later."""


class RateLimitedError(Exception):
    """Over the configured request rate; `retry_after` seconds until one more is admitted."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceededError(Exception):
    """The request's deadline passed before its result was ready."""


class BatcherClosedError(Exception):
    """The batcher has stopped; the request was not (fully) run."""


def sequence_bucket(length: int) -> int:
    """The padded length a text of `length` tokens is batched at: the next power of two (at
    least 8), so a batch's padding never exceeds its real tokens."""
    return max(_SMALLEST_BUCKET, 1 << (max(length, 1) - 1).bit_length())


class WorkQueue(Protocol):
    """What the HTTP app asks of the batcher: this process's `Batcher`, or in a front-end
    process the client of the engine process's batcher (`sas_runtime.engine_client`)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def embed(self, texts: Sequence[EncodedText], *, deadline: float) -> np.ndarray: ...

    async def attend(self, item: AttentionInput, *, deadline: float) -> torch.Tensor: ...


@dataclass(eq=False, slots=True)
class _Job:
    """One unit of engine work: a text to embed or one attention problem."""

    kind: _WorkKind
    payload: EncodedText | AttentionInput
    group: Hashable
    tokens: int
    deadline: float
    enqueued: float
    future: asyncio.Future[object] = field(repr=False)


class Batcher:
    """Runs engine work in batches.

    Requests enter through `embed` / `attend`, which wait for the result (or raise
    RateLimitedError, QueueFullError, DeadlineExceededError, BatcherClosedError, or the engine's
    ValueError for input it cannot take). A request the queue has room for takes a token
    from `rate_limit`.
    Queue depth counts admitted requests not yet answered. Once work is queued the batcher
    waits up to `windowMicroseconds` for more, unless a batch is full already or a single
    request has arrived since the last batch was taken (traffic that sparse brings no company
    within the window). A batch holds
    work of one group only (embeddings of one sequence bucket, or attention problems of one
    shape), at most `maxBatchSize` units and `maxTokens` padded tokens (a single larger unit
    still runs alone). The group with the earliest deadline goes first.
    """

    def __init__(
        self,
        engine: Engine,
        batching: BatchingConfig,
        metrics: RuntimeMetrics,
        *,
        rate_limit: TokenBucket | None = None,
    ) -> None:
        self._engine = engine
        self._rate_limit = rate_limit
        self._window = batching.window_microseconds / 1e6
        self._max_batch = batching.max_batch_size
        self._max_tokens = batching.max_tokens
        self._max_queue = batching.max_queue_depth
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sas-engine")
        self._groups: dict[Hashable, list[tuple[float, int, _Job]]] = {}
        self._sequence = itertools.count()
        self._queued = 0
        self._pending = 0
        self._arrivals_since_batch = 0
        self._depth_due = False
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._fallback_seen: str | None = None
        self._fallback_counts_seen: dict[str, int] = {}
        self._backend_labels: dict[str, str] | None = None

    @property
    def pending(self) -> int:
        """Requests admitted and not yet answered."""
        return self._pending

    async def start(self) -> None:
        """Warm the engine up in the worker thread, then start taking batches."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._engine.warmup)
        self._observe_engine_info()
        self._worker = asyncio.create_task(self._work(), name="sas-batcher")

    async def stop(self) -> None:
        """Refuse new work, fail whatever is still queued with BatcherClosedError, stop."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for heap in self._groups.values():
            for _, _, job in heap:
                if not job.future.done():
                    job.future.set_exception(BatcherClosedError("the runtime is shutting down"))
        self._groups.clear()
        self._queued = 0
        self._executor.shutdown(wait=False)

    async def embed(self, texts: Sequence[EncodedText], *, deadline: float) -> np.ndarray:
        """Embeddings of `texts`, float32 [len(texts), dim], by `deadline` (the loop's clock)."""
        rows = await self._wait(self.submit_embed(texts, deadline=deadline), deadline)
        return np.stack([np.asarray(row) for row in rows])

    async def attend(self, item: AttentionInput, *, deadline: float) -> torch.Tensor:
        """The attention output for `item` by `deadline` (the loop's clock)."""
        (output,) = await self._wait(self.submit_attend(item, deadline=deadline), deadline)
        return output  # type: ignore[return-value]

    def submit_embed(
        self, texts: Sequence[EncodedText], *, deadline: float
    ) -> asyncio.Future[list[object]]:
        """Queue `texts`; the future holds one embedding row per text. Raises the refusals at
        once. Jobs still queued at `deadline` fail with DeadlineExceededError; cancelling the
        future withdraws whatever has not run."""
        jobs = []
        for text in texts:
            bucket = sequence_bucket(len(text.ids))
            jobs.append(self._job("embed", text, ("embed", bucket), bucket))
        return self._enqueue(jobs, deadline)

    def submit_attend(
        self, item: AttentionInput, *, deadline: float
    ) -> asyncio.Future[list[object]]:
        """Queue one attention problem; the future holds [output]. As `submit_embed`."""
        q, k = item.q, item.k
        group = (
            "attend",
            tuple(q.shape),
            tuple(k.shape),
            q.dtype,
            item.pattern,
            item.document_ids is not None,
        )
        tokens = q.shape[0] * max(q.shape[2], k.shape[2])
        return self._enqueue([self._job("attend", item, group, tokens)], deadline)

    def _job(
        self, kind: _WorkKind, payload: EncodedText | AttentionInput, group: Hashable, tokens: int
    ) -> _Job:
        loop = asyncio.get_running_loop()
        return _Job(kind, payload, group, tokens, 0.0, 0.0, loop.create_future())

    def _enqueue(self, jobs: list[_Job], deadline: float) -> asyncio.Future[list[object]]:
        if self._closed:
            raise BatcherClosedError("the runtime is shutting down")
        # The queue first: a request it refuses has not spent a token of the rate limit.
        if self._pending >= self._max_queue:
            raise QueueFullError(
                f"the queue holds {self._pending} requests (batching.maxQueueDepth)"
            )
        if self._rate_limit is not None and (wait := self._rate_limit.try_acquire()) > 0:
            raise RateLimitedError(
                f"over the rate limit of {self._rate_limit.rate:g} requests/s",
                retry_after=wait,
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        request: asyncio.Future[list[object]] = loop.create_future()
        results: list[object] = [None] * len(jobs)
        left = len(jobs)

        def job_done(index: int, job: asyncio.Future[object]) -> None:
            nonlocal left
            if request.done() or job.cancelled():
                return
            if (error := job.exception()) is not None:
                request.set_exception(error)
                return
            results[index] = job.result()
            left -= 1
            if not left:
                request.set_result(results)

        def request_done(_: asyncio.Future[list[object]]) -> None:
            for job in jobs:
                job.future.cancel()
            self._pending -= 1
            self._publish_depth()

        self._pending += 1
        self._arrivals_since_batch += 1
        self._publish_depth()
        for index, job in enumerate(jobs):
            job.enqueued = now
            job.deadline = deadline
            job.future.add_done_callback(functools.partial(job_done, index))
            entry = (job.deadline, next(self._sequence), job)
            heapq.heappush(self._groups.setdefault(job.group, []), entry)
        request.add_done_callback(request_done)
        self._queued += len(jobs)
        self._arrived.set()
        return request

    def _publish_depth(self) -> None:
        """Set the queue-depth gauge once per turn of the loop, however many requests came and
        went in it (each set is a write to a shared file in multi-process mode)."""
        if not self._depth_due:
            self._depth_due = True
            asyncio.get_running_loop().call_soon(self._set_depth)

    def _set_depth(self) -> None:
        self._depth_due = False
        self._metrics.queue_depth.set(self._pending)

    async def _wait(self, request: asyncio.Future[list[object]], deadline: float) -> list[object]:
        seconds = deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(request, seconds)
        except TimeoutError:
            raise DeadlineExceededError(
                f"no result within the request's deadline ({seconds * 1000:.0f} ms)"
            ) from None

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queued:
                self._arrived.clear()
                await self._arrived.wait()
            # Waiting for company pays only while requests keep coming: one that arrived alone
            # since the last batch was taken runs at once.
            if (
                self._window > 0
                and self._queued < self._max_batch
                and self._arrivals_since_batch > 1
            ):
                await self._gather()
            self._arrivals_since_batch = 0
            with nvtx.annotate("sas.batch.assemble", domain="sas"):
                batch = self._take_batch(loop.time())
            if batch:
                await self._run(batch)

    async def _gather(self) -> None:
        """Wait up to the batching window for more work, or until a batch is full. The loop's
        timers (and, under uvloop, its clock) count whole milliseconds, so the window is timed
        with perf_counter and its last millisecond is spent turning the loop, which reads
        whatever has arrived, rather than sleeping past it."""
        end = time.perf_counter() + self._window
        while self._queued < self._max_batch and (left := end - time.perf_counter()) > 0:
            if left > _TIMER_RESOLUTION:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), left - _TIMER_RESOLUTION)
            else:
                await asyncio.sleep(0)

    def _take_batch(self, now: float) -> list[_Job]:
        """Pop the next batch: from the group whose head has the earliest deadline."""
        best: list[tuple[float, int, _Job]] | None = None
        for group in list(self._groups):
            heap = self._groups[group]
            self._drop_dead(heap, now)
            if not heap:
                del self._groups[group]
            elif best is None or heap[0] < best[0]:
                best = heap
        if best is None:
            return []
        batch: list[_Job] = []
        tokens = 0
        while best and len(batch) < self._max_batch:
            self._drop_dead(best, now)
            if not best or (batch and tokens + best[0][2].tokens > self._max_tokens):
                break
            job = heapq.heappop(best)[2]
            self._queued -= 1
            batch.append(job)
            tokens += job.tokens
        return batch

    def _drop_dead(self, heap: list[tuple[float, int, _Job]], now: float) -> None:
        """Pop jobs whose request gave up (deadline passed or answered otherwise)."""
        while heap and (heap[0][2].future.done() or heap[0][0] <= now):
            job = heapq.heappop(heap)[2]
            self._queued -= 1
            if not job.future.done():
                job.future.set_exception(DeadlineExceededError("deadline passed in the queue"))

    async def _run(self, batch: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        kind = batch[0].kind
        started = loop.time()
        for job in batch:
            self._metrics.queue_wait_seconds.labels(kind=kind).observe(started - job.enqueued)
        self._metrics.batch_size.labels(kind=kind).observe(len(batch))
        payloads = [job.payload for job in batch]
        try:
            outputs = await loop.run_in_executor(self._executor, self._call_engine, kind, payloads)
        except asyncio.CancelledError:
            for job in batch:
                _fail(job, BatcherClosedError("the runtime stopped during this batch"))
            raise
        except ValueError as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            # One input the engine refuses fails only its own request: each runs alone. A stop
            # meanwhile answers those still waiting their turn, as it does the queue.
            try:
                for job in batch:
                    await self._run([job])
            except asyncio.CancelledError:
                for job in batch:
                    _fail(job, BatcherClosedError("the runtime stopped during this batch"))
                raise
            return
        except Exception as exc:
            for job in batch:
                _fail(job, exc)
            return
        finally:
            self._observe_engine_info()
        elapsed = loop.time() - started
        self._metrics.engine_seconds.labels(kind=kind).observe(elapsed)
        self._count_work(kind, payloads, elapsed)
        for job, output in zip(batch, outputs, strict=True):
            if not job.future.done():
                job.future.set_result(output)

    def _call_engine(
        self, kind: _WorkKind, payloads: list[EncodedText | AttentionInput]
    ) -> list[object]:
        with nvtx.annotate(f"sas.forward.{kind}", domain="sas"):
            if kind == "embed":
                texts = [p for p in payloads if isinstance(p, EncodedText)]
                out: list[object] = list(self._engine.embed(texts))
            else:
                out = list(
                    self._engine.attend([p for p in payloads if isinstance(p, AttentionInput)])
                )
        if len(out) != len(payloads):
            raise RuntimeError(f"the engine returned {len(out)} results for {len(payloads)} inputs")
        return out

    def _count_work(
        self, kind: _WorkKind, payloads: list[EncodedText | AttentionInput], elapsed: float
    ) -> None:
        tokens = 0
        flops = 0
        for p in payloads:
            if isinstance(p, EncodedText):
                tokens += len(p.ids)
            else:
                b, h, lq, d = p.q.shape
                tokens += b * lq
                flops += 4 * b * h * lq * p.k.shape[2] * d
        self._metrics.tokens.labels(kind=kind).inc(tokens)
        if flops:
            self._metrics.attention_flops.inc(flops)
            if elapsed > 0:
                self._metrics.attention_flops_per_second.set(flops / elapsed)

    def _observe_engine_info(self) -> None:
        info = self._engine.info
        if info.fallback_reason is not None and info.fallback_reason != self._fallback_seen:
            self._metrics.backend_fallbacks.labels(reason=info.fallback_reason).inc()
        self._fallback_seen = info.fallback_reason
        for reason, count in info.fallback_counts.items():
            seen = self._fallback_counts_seen.get(reason, 0)
            if count > seen:
                self._metrics.backend_fallbacks.labels(reason=reason).inc(count - seen)
            self._fallback_counts_seen[reason] = count
        labels = {
            "model": info.model,
            "backend": info.backend,
            "pattern": info.pattern,
            "device": info.device,
        }
        if labels != self._backend_labels:
            if self._backend_labels is not None:
                # Set to 0, not removed: multi-process metrics cannot remove a series.
                self._metrics.backend_info.labels(**self._backend_labels).set(0)
            self._metrics.backend_info.labels(**labels).set(1)
            self._backend_labels = labels


def _fail(job: _Job, exc: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(exc)
