"""The attention backend interface: what a backend supports, why it cannot run, how it is called.

After vLLM's `vllm/v1/attention/backend.py`: a backend class declares its dtypes, head sizes,
devices and compute capability, and `validate_configuration` returns readable reasons instead of
a bool, so that `auto` can say why it passed a backend over.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from sas_runtime.block_mask import BlockMask
from sas_runtime.config import PatternConfig

__all__ = ["AttentionBackend", "AttentionMetadata", "AttentionOutput", "AttentionSpec"]


@dataclass(frozen=True, slots=True)
class AttentionSpec:
    """What a backend is asked to run, known before any call.

    device: where q, k, v live. dtype: their dtype. head_dim: D. num_heads: query heads H.
    num_kv_heads: key/value heads Hkv (H a multiple of Hkv: grouped-query attention).
    pattern: the attention pattern the block masks come from.
    """

    device: torch.device
    dtype: torch.dtype
    head_dim: int
    num_heads: int
    num_kv_heads: int
    pattern: PatternConfig


@dataclass(frozen=True, slots=True)
class AttentionMetadata:
    """Per-call inputs besides q, k and v, built once per forward by `build_metadata`.

    block_mask: the compiled pattern; its tensors are [B or 1, H or 1, QB(, KB)] (see BlockMask).
    scale: softmax scale; 1/sqrt(head_dim) when None.
    dense_mask: [B or 1, H or 1, Q, K] bool, the element mask, for backends that apply it
        element-wise (None for backends that walk the block lists).
    """

    block_mask: BlockMask
    scale: float | None = None
    dense_mask: Tensor | None = None


@dataclass(frozen=True, slots=True)
class AttentionOutput:
    """out: [B, H, Q, D] in q's dtype; rows with no allowed key are zero.
    lse: [B, H, Q] float32 natural-log sum of exp of the scaled allowed scores (-inf for rows
    with no allowed key), or None when not asked for.
    """

    out: Tensor
    lse: Tensor | None = None


class AttentionBackend(abc.ABC):
    """One way to compute masked attention.

    Contract of `forward`: q [B, H, Q, D]; k, v [B, Hkv, K, D] with H a multiple of Hkv; all on
    one device in one dtype the backend supports; metadata from this backend's `build_metadata`
    for the same shapes. Callers check `validate_configuration` first; `forward` may assume it
    returned no reasons.
    """

    name: ClassVar[str]
    supported_dtypes: ClassVar[frozenset[torch.dtype]]
    supported_device_types: ClassVar[frozenset[str]]
    supported_head_sizes: ClassVar[frozenset[int] | None] = None
    """None: any head size."""
    min_compute_capability: ClassVar[tuple[int, int] | None] = None
    """CUDA devices only; None: any."""
    max_scores: ClassVar[int | None] = None
    """Largest batch·heads·q_len·kv_len one call may have, for backends that materialise the
    score matrix or mask; None: no limit. Callers refuse larger problems before building metadata."""

    @classmethod
    def validate_configuration(cls, spec: AttentionSpec) -> list[str]:
        """Readable reasons why this backend cannot run `spec`; empty when it can."""
        reasons = []
        if spec.device.type not in cls.supported_device_types:
            reasons.append(
                f"device '{spec.device.type}' not supported "
                f"(supports {', '.join(sorted(cls.supported_device_types))})"
            )
        if spec.dtype not in cls.supported_dtypes:
            names = ", ".join(sorted(str(d).removeprefix("torch.") for d in cls.supported_dtypes))
            reasons.append(
                f"dtype {str(spec.dtype).removeprefix('torch.')} not supported (supports {names})"
            )
        if cls.supported_head_sizes is not None and spec.head_dim not in cls.supported_head_sizes:
            sizes = ", ".join(str(s) for s in sorted(cls.supported_head_sizes))
            reasons.append(f"head size {spec.head_dim} not supported (supports {sizes})")
        if spec.num_kv_heads < 1 or spec.num_heads % spec.num_kv_heads:
            reasons.append(
                f"query heads ({spec.num_heads}) must be a multiple of kv heads ({spec.num_kv_heads})"
            )
        if (
            cls.min_compute_capability is not None
            and spec.device.type == "cuda"
            and torch.cuda.is_available()
        ):
            capability = torch.cuda.get_device_capability(spec.device)
            if capability < cls.min_compute_capability:
                wanted = ".".join(str(c) for c in cls.min_compute_capability)
                reasons.append(f"compute capability {capability[0]}.{capability[1]} below {wanted}")
        return reasons

    def build_metadata(
        self, block_mask: BlockMask, scale: float | None = None
    ) -> AttentionMetadata:
        """Per-forward metadata; backends that need more derived tensors override this."""
        return AttentionMetadata(block_mask=block_mask, scale=scale)

    @abc.abstractmethod
    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        metadata: AttentionMetadata,
        *,
        return_lse: bool = False,
    ) -> AttentionOutput:
        """Masked attention; see the class docstring for shapes."""
