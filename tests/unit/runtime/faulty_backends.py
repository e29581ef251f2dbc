"""Faulty `sparse` backends for the correctness-guard tests, registered through the engine's
backend paths (no monkeypatching): they run on the CPU in float32 like the dense backend, but
answer wrongly or raise as a broken kernel would."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from sas_runtime.attention.backend import AttentionMetadata, AttentionOutput
from sas_runtime.attention.dense import DenseBackend
from sas_runtime.config import AttentionBackendName

__all__ = [
    "RaisingSparseBackend",
    "WrongSparseBackend",
    "WrongSparseHead64Backend",
    "paths_with_sparse",
]


class WrongSparseBackend(DenseBackend):
    """Dense attention plus a constant: every answer is off by an RMSE of 0.05."""

    name: ClassVar[str] = "sparse"

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        metadata: AttentionMetadata,
        *,
        return_lse: bool = False,
    ) -> AttentionOutput:
        return AttentionOutput(out=super().forward(q, k, v, metadata).out + 0.05)


class RaisingSparseBackend(DenseBackend):
    """Raises on every call, as a kernel launch failure surfaces in torch."""

    name: ClassVar[str] = "sparse"

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        metadata: AttentionMetadata,
        *,
        return_lse: bool = False,
    ) -> AttentionOutput:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def paths_with_sparse(class_name: str) -> dict[AttentionBackendName, str]:
    """Backend paths with `sparse` served by one of this module's classes."""
    return {
        AttentionBackendName.SPARSE: f"tests.unit.runtime.faulty_backends:{class_name}",
        AttentionBackendName.DENSE: "sas_runtime.attention.dense:DenseBackend",
        AttentionBackendName.REFERENCE: "sas_runtime.attention.reference:ReferenceBackend",
    }


class WrongSparseHead64Backend(WrongSparseBackend):
    """Like WrongSparseBackend, but only for head size 64, as the real kernel is limited: the
    model (head size 32) runs dense while 64-wide attention requests run on it."""

    supported_head_sizes: ClassVar[frozenset[int] | None] = frozenset({64})
