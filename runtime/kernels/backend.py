"""The `sparse` attention backend: our block-sparse H100 kernel behind the runtime's interface.

The registry imports this module lazily; importing it never needs a GPU or a build. Whether the
kernel can serve is decided in `validate_configuration`, which loads the extension and returns
the reasons it cannot (not built, no Hopper GPU, a block size or head size it lacks).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from sas_runtime.attention.backend import (
    AttentionBackend,
    AttentionMetadata,
    AttentionOutput,
    AttentionSpec,
)
from sas_runtime.kernels import ops

__all__ = ["SparseBackend"]


class SparseBackend(AttentionBackend):
    """Visits only the key/value blocks the block mask lists; element masking only inside partial
    blocks. Needs the compiled extension and an sm_90 GPU (the kernel is built for sm_90a)."""

    name: ClassVar[str] = "sparse"
    supported_dtypes: ClassVar[frozenset[torch.dtype]] = frozenset({torch.bfloat16, torch.float16})
    supported_device_types: ClassVar[frozenset[str]] = frozenset({"cuda"})
    supported_head_sizes: ClassVar[frozenset[int] | None] = frozenset({64, 128})
    min_compute_capability: ClassVar[tuple[int, int] | None] = (9, 0)

    @classmethod
    def validate_configuration(cls, spec: AttentionSpec) -> list[str]:
        reasons = super().validate_configuration(spec)
        if spec.pattern.block_size != ops.BLOCK_SIZE:
            reasons.append(
                f"block size {spec.pattern.block_size} not supported "
                f"(the kernel's tiles are {ops.BLOCK_SIZE})"
            )
        if spec.device.type == "cuda":
            unavailable = ops.load_library() or ops.unavailable_reason(spec.device)
            if unavailable is not None:
                reasons.append(unavailable)
        return reasons

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        metadata: AttentionMetadata,
        *,
        return_lse: bool = False,
    ) -> AttentionOutput:
        out, lse = ops.block_sparse_attention(
            q, k, v, block_mask=metadata.block_mask, scale=metadata.scale
        )
        return AttentionOutput(out=out, lse=lse if return_lse else None)
