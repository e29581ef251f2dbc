"""The guard that keeps sparse attention honest (design contract 6).

`GuardedSparseBackend` wraps the sparse backend: before each launch it checks shapes, dtypes and
alignment (`SparseLaunchError` instead of a launch on inputs the kernel would misread), and when
`SparseGuard` says a sample is due it recomputes the first sample of the call densely and
compares. `SparseGuard` counts the batches that ran sparse, judges the RMSE against
`attention.validation.maxRmse` (past it the guard trips and the engine serves dense from then
on) and counts the batches sent to dense instead, by reason.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import torch
from torch import Tensor

from sas_runtime.attention.backend import AttentionBackend, AttentionMetadata, AttentionOutput
from sas_runtime.block_mask import BlockMask
from sas_runtime.config import ValidationConfig

__all__ = [
    "FALLBACK_KERNEL_ERROR",
    "FALLBACK_LAUNCH_CHECK",
    "GuardedSparseBackend",
    "SparseGuard",
    "SparseLaunchError",
    "first_sample",
    "launch_problems",
    "rmse",
]

logger = logging.getLogger(__name__)

FALLBACK_LAUNCH_CHECK = "sparse_launch_check"
"""Reason label: a batch went dense because its inputs failed the pre-launch checks."""
FALLBACK_KERNEL_ERROR = "sparse_kernel_error"
"""Reason label: a batch went dense because the sparse kernel raised."""

_ALIGNMENT_BYTES = 16
"""TMA needs 16-byte aligned base addresses and strides."""


class SparseLaunchError(Exception):
    """The sparse kernel must not be launched on these inputs; the message says why."""


def launch_problems(q: Tensor, k: Tensor, v: Tensor, block_mask: BlockMask) -> list[str]:
    """Why the sparse kernel must not run on q [B, H, Q, D], k, v [B, Hkv, K, D] with this
    block mask: shapes, dtypes, devices, a head dim that is not contiguous, addresses or strides
    off 16 bytes, mask tensors that do not match the problem. Empty when it may run."""
    problems = []
    if not (q.dim() == k.dim() == v.dim() == 4):
        return [f"q, k, v must be 4-D, got {q.dim()}, {k.dim()}, {v.dim()}"]
    batch, heads, q_len, head_dim = q.shape
    if k.shape != v.shape or k.shape[0] != batch or k.shape[3] != head_dim:
        problems.append(f"shapes q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)} differ")
    elif heads % k.shape[1]:
        problems.append(f"query heads {heads} not a multiple of kv heads {k.shape[1]}")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        problems.append("q, k, v must share one dtype and one device")
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if tensor.stride(-1) != 1:
            problems.append(f"{name}'s head dim is not contiguous (stride {tensor.stride(-1)})")
        if tensor.data_ptr() % _ALIGNMENT_BYTES:
            problems.append(f"{name}'s address is not {_ALIGNMENT_BYTES}-byte aligned")
        if any((s * tensor.element_size()) % _ALIGNMENT_BYTES for s in tensor.stride()[:-1]):
            problems.append(f"{name}'s strides {list(tensor.stride())} are not 16-byte multiples")
    if (block_mask.q_len, block_mask.kv_len) != (q_len, k.shape[2]):
        problems.append(
            f"block mask is for {block_mask.q_len}x{block_mask.kv_len}, "
            f"the problem is {q_len}x{k.shape[2]}"
        )
    for grid in (block_mask.kv_num_blocks, block_mask.full_kv_num_blocks):
        if grid.dtype != torch.int32 or grid.device != q.device:
            problems.append("block mask tensors must be int32 on q's device")
            break
        if grid.shape[0] not in (1, batch) or grid.shape[1] not in (1, heads):
            problems.append(f"block mask grid {list(grid.shape)} does not fit batch and heads")
            break
    return problems


def first_sample(block_mask: BlockMask) -> BlockMask:
    """The block mask of the batch's first sequence alone (batch dimension 1)."""
    return block_mask.map_tensors(lambda t: t[:1])


def rmse(result: Tensor, reference: Tensor) -> float:
    """Root-mean-square difference, computed in float32."""
    return float((result.float() - reference.float()).pow(2).mean().sqrt())


class SparseGuard:
    """When to check, whether a check passed, and what went dense instead of sparse.

    The engine calls `begin_sparse_batch` once per batch that will run on the sparse backend;
    every `sample_every`-th such batch sets `sampling`, and the guarded backend then compares
    one sample against dense (`judge`). Not thread-safe: the engine's one worker thread uses it.
    """

    def __init__(self, validation: ValidationConfig) -> None:
        self._max_rmse = validation.max_rmse
        self._sample_every = validation.sample_every
        self._batches = 0
        self.sampling = False
        self._tripped: str | None = None
        self._fallbacks: dict[str, int] = {}
        self.last_rmse: float | None = None

    @property
    def tripped(self) -> str | None:
        """Why the service switched to dense for good; None while sparse is trusted."""
        return self._tripped

    @property
    def fallback_counts(self) -> dict[str, int]:
        """Batches sent to dense instead of sparse, by reason label (a copy)."""
        return dict(self._fallbacks)

    def begin_sparse_batch(self) -> None:
        """Count a batch about to run sparse; sample it when it is the sample_every-th."""
        self._batches += 1
        self.sampling = self._batches % self._sample_every == 0

    def judge(self, sparse: Tensor, dense: Tensor) -> float:
        """Compare one sample; above maxRmse the guard trips. Returns the RMSE."""
        self.sampling = False
        error = rmse(sparse, dense)
        self.last_rmse = error
        if error > self._max_rmse and self._tripped is None:
            self._tripped = (
                f"sparse result RMSE {error:.3g} against dense exceeds "
                f"attention.validation.maxRmse {self._max_rmse:g}; serving dense"
            )
            logger.error("correctness guard tripped: %s", self._tripped)
        return error

    def count_fallback(self, reason: str, error: BaseException) -> None:
        """Record one batch that ran dense instead of sparse because of `error`."""
        self._fallbacks[reason] = self._fallbacks.get(reason, 0) + 1
        logger.warning("batch ran dense instead of sparse (%s): %s", reason, error)


class GuardedSparseBackend(AttentionBackend):
    """The sparse backend behind the pre-launch checks and the sampled dense comparison.
    `forward` raises SparseLaunchError rather than launch on inputs that fail the checks."""

    name: ClassVar[str] = "sparse"
    supported_dtypes: ClassVar[frozenset[torch.dtype]] = frozenset()
    supported_device_types: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self, sparse: AttentionBackend, dense: AttentionBackend, guard: SparseGuard
    ) -> None:
        self.sparse = sparse
        self.dense = dense
        self.guard = guard

    def build_metadata(
        self, block_mask: BlockMask, scale: float | None = None
    ) -> AttentionMetadata:
        return self.sparse.build_metadata(block_mask, scale)

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        metadata: AttentionMetadata,
        *,
        return_lse: bool = False,
    ) -> AttentionOutput:
        problems = launch_problems(q, k, v, metadata.block_mask)
        if problems:
            raise SparseLaunchError("; ".join(problems))
        output = self.sparse.forward(q, k, v, metadata, return_lse=return_lse)
        if self.guard.sampling:
            sample = self.dense.build_metadata(first_sample(metadata.block_mask), metadata.scale)
            reference = self.dense.forward(q[:1], k[:1], v[:1], sample).out
            self.guard.judge(output.out[:1], reference)
        return output
