"""CUDA graphs of the embeddings forward, one per (batch size, sequence length) bucket.

At warm-up `GraphedForward.capture` records the forward once per bucket, largest first, on
static input buffers that share one memory pool; a batch is then padded up to its bucket, its
ids and lengths copied into the bucket's buffers, and the graph replayed. The graph builds the
attention metadata (the padding mask) from the lengths itself, so a batch costs the host two
copies and a replay; a builder that cannot run inside a capture (it reads values on the host)
leaves its bucket refreshing the metadata in place before each replay instead. Batches outside
every bucket run eagerly. The bucketing and padding are plain functions (tested on the CPU);
capture and replay need a CUDA device.
"""

from __future__ import annotations

import bisect
import dataclasses
import gc
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import nvtx
import torch
from torch import Tensor

from sas_runtime.attention.backend import AttentionMetadata
from sas_runtime.batcher import sequence_bucket

if TYPE_CHECKING:
    from torch.cuda import _POOL_HANDLE

__all__ = [
    "CaptureReport",
    "EmbeddingsForward",
    "GraphBuckets",
    "GraphedForward",
    "MetadataBuilder",
    "metadata_tensors",
    "pad_batch",
    "sequence_buckets",
]

logger = logging.getLogger(__name__)

EmbeddingsForward = Callable[[Tensor, Tensor, AttentionMetadata], Tensor]
"""(input_ids [B, S], lengths [B], metadata) -> float32 embeddings [B, hidden]."""
MetadataBuilder = Callable[[Tensor, int], AttentionMetadata]
"""(lengths [B] on the device, padded length S) -> the batch's attention metadata, with tensor
shapes that depend only on (B, S); captured into the graph where it reads no tensor value on the
host."""


def sequence_buckets(max_length: int) -> tuple[int, ...]:
    """The padded lengths the batcher groups texts by (`sas_runtime.batcher.sequence_bucket`:
    powers of two from 8) below `max_length`, and `max_length` itself, the model's cap."""
    buckets = []
    length = sequence_bucket(1)
    while length < max_length:
        buckets.append(length)
        length = sequence_bucket(length + 1)
    buckets.append(max_length)
    return tuple(buckets)


@dataclass(frozen=True, slots=True)
class GraphBuckets:
    """The shapes graphs are captured for. batch_sizes, sequence_lengths: ascending, unique."""

    batch_sizes: tuple[int, ...]
    sequence_lengths: tuple[int, ...]

    @classmethod
    def of(cls, batch_sizes: Sequence[int], max_length: int) -> GraphBuckets:
        """The configured batch sizes (`attention.cudaGraphs.batchSizes`) by the sequence
        buckets up to the model's maximum length."""
        return cls(tuple(sorted(set(batch_sizes))), sequence_buckets(max_length))

    def find(self, batch: int, length: int) -> tuple[int, int] | None:
        """The smallest (batch size, sequence length) bucket holding a batch of `batch` texts
        padded to `length` tokens; None when the batch is larger than every bucket."""
        b = bisect.bisect_left(self.batch_sizes, batch)
        s = bisect.bisect_left(self.sequence_lengths, length)
        if batch < 1 or length < 1 or b == len(self.batch_sizes) or s == len(self.sequence_lengths):
            return None
        return self.batch_sizes[b], self.sequence_lengths[s]

    def all(self) -> list[tuple[int, int]]:
        """Every bucket, largest first (the capture order, so smaller graphs reuse the pool)."""
        return sorted(
            ((b, s) for b in self.batch_sizes for s in self.sequence_lengths),
            key=lambda shape: (shape[0] * shape[1], shape),
            reverse=True,
        )


def pad_batch(
    ids: Sequence[Sequence[int]], bucket: tuple[int, int], pad_token_id: int
) -> tuple[Tensor, Tensor]:
    """int64 ids [B, S] (each text padded with `pad_token_id`, then rows of padding up to B)
    and int64 lengths [B] (1 for the padding rows, so every row has a valid token)."""
    batch, length = bucket
    if len(ids) > batch or any(len(text) > length for text in ids):
        raise ValueError(f"a batch of {len(ids)} texts does not fit bucket {bucket}")
    lengths = np.ones(batch, dtype=np.int64)
    lengths[: len(ids)] = [len(text) for text in ids]
    rows = np.full((batch, length), pad_token_id, dtype=np.int64)
    filled = np.arange(length) < lengths[: len(ids), None]
    rows[: len(ids)][filled] = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64)
    return torch.from_numpy(rows), torch.from_numpy(lengths)


def metadata_tensors(metadata: AttentionMetadata) -> list[Tensor]:
    """Every tensor of `metadata` (block mask, element mask, dense mask) in a fixed order, so
    fresh metadata can be copied into a captured graph's tensors one by one."""
    tensors: list[Tensor] = []

    def collect(value: object) -> None:
        if isinstance(value, Tensor):
            tensors.append(value)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for field in dataclasses.fields(value):
                collect(getattr(value, field.name))

    collect(metadata)
    return tensors


@dataclass(frozen=True, slots=True)
class CaptureReport:
    """What warm-up captured. graphs: buckets captured; seconds: time spent capturing;
    memory_bytes: device memory reserved for the graphs, their pool and static buffers;
    failed: buckets that could not be captured (they run eagerly), with the reason."""

    graphs: int
    seconds: float
    memory_bytes: int
    failed: dict[str, str]


@dataclass(slots=True)
class _Graph:
    graph: torch.cuda.CUDAGraph
    input_ids: Tensor
    lengths: Tensor
    output: Tensor
    metadata: list[Tensor] | None
    """The static metadata tensors the host refreshes before a replay; None when the graph
    builds them itself."""
    lengths_seen: list[int] | None = None
    """The padded lengths last copied in (the metadata depends on nothing else)."""


class GraphedForward:
    """The embeddings forward replayed from CUDA graphs where a bucket fits, else None (the
    caller runs eagerly). Called by one thread at a time, like the engine's `embed`."""

    def __init__(
        self,
        forward: EmbeddingsForward,
        build_metadata: MetadataBuilder,
        buckets: GraphBuckets,
        *,
        device: torch.device,
        pad_token_id: int,
    ) -> None:
        self._forward = forward
        self._build_metadata = build_metadata
        self.buckets = buckets
        self._device = device
        self._pad = pad_token_id
        self._graphs: dict[tuple[int, int], _Graph] = {}

    def capture(self) -> CaptureReport:
        """Capture every bucket (largest first, one shared memory pool); a bucket whose capture
        fails is logged and left to run eagerly."""
        torch.cuda.synchronize(self._device)
        # torch.cuda.graph empties the allocator's cache on entry; empty it before the baseline
        # too, or memory cached before capture (warm-up's, a test's) would count against it.
        gc.collect()
        torch.cuda.empty_cache()
        reserved = torch.cuda.memory_reserved(self._device)
        started = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        failed: dict[str, str] = {}
        for bucket in self.buckets.all():
            try:
                self._graphs[bucket] = self._capture_one(bucket, pool)
            except Exception as exc:  # a bucket that cannot be captured runs eagerly
                failed[f"{bucket[0]}x{bucket[1]}"] = str(exc).splitlines()[0]
                logger.warning("CUDA graph for bucket %s not captured: %s", bucket, exc)
        torch.cuda.synchronize(self._device)
        return CaptureReport(
            graphs=len(self._graphs),
            seconds=time.perf_counter() - started,
            memory_bytes=torch.cuda.memory_reserved(self._device) - reserved,
            failed=failed,
        )

    def _capture_one(self, bucket: tuple[int, int], pool: _POOL_HANDLE) -> _Graph:
        stream = torch.cuda.current_stream(self._device)
        try:
            return self._capture(bucket, pool, metadata_in_graph=True)
        except RuntimeError as exc:
            # A capture that fails in capture_end leaves its stream current: go back.
            torch.cuda.set_stream(stream)
            logger.info(
                "bucket %s: attention metadata refreshed before each replay (it cannot be "
                "captured: %s)",
                bucket,
                str(exc).splitlines()[0],
            )
            return self._capture(bucket, pool, metadata_in_graph=False)

    def _capture(
        self, bucket: tuple[int, int], pool: _POOL_HANDLE, *, metadata_in_graph: bool
    ) -> _Graph:
        batch, length = bucket
        input_ids = torch.full((batch, length), self._pad, dtype=torch.int64, device=self._device)
        lengths = torch.full((batch,), length, dtype=torch.int64, device=self._device)
        side = torch.cuda.Stream(self._device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(side), torch.inference_mode():
            # allocator and library warm-up
            self._forward(input_ids, lengths, self._build_metadata(lengths, length))
        torch.cuda.current_stream(self._device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        static = None if metadata_in_graph else self._build_metadata(lengths, length)
        with torch.cuda.graph(graph, pool=pool), torch.inference_mode():
            metadata = self._build_metadata(lengths, length) if static is None else static
            output = self._forward(input_ids, lengths, metadata)
        refreshed = None if static is None else metadata_tensors(static)
        return _Graph(graph, input_ids, lengths, output, metadata=refreshed)

    def run(self, ids: Sequence[Sequence[int]]) -> Tensor | None:
        """float32 embeddings [len(ids), hidden] on the device from the bucket's graph, or None
        when no captured bucket holds this batch."""
        bucket = self.buckets.find(len(ids), max(len(text) for text in ids))
        if bucket is None or (captured := self._graphs.get(bucket)) is None:
            return None
        with nvtx.annotate("sas.embed.assemble", domain="sas"):
            input_ids, lengths = pad_batch(ids, bucket, self._pad)
        with nvtx.annotate("sas.embed.h2d", domain="sas"), torch.inference_mode():
            captured.input_ids.copy_(input_ids)
            if captured.lengths_seen != (seen := lengths.tolist()):
                captured.lengths.copy_(lengths)
                if captured.metadata is not None:
                    fresh = metadata_tensors(self._build_metadata(captured.lengths, bucket[1]))
                    for static, value in zip(captured.metadata, fresh, strict=True):
                        static.copy_(value)
                captured.lengths_seen = seen
        with nvtx.annotate("sas.embed.forward", domain="sas"):
            captured.graph.replay()
        return captured.output[: len(ids)]
