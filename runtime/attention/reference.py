"""The reference backend: attention written out in float64, the yardstick for every other backend."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from sas_runtime.attention.backend import AttentionBackend, AttentionMetadata, AttentionOutput

__all__ = ["ReferenceBackend"]


class ReferenceBackend(AttentionBackend):
    """softmax(q·kᵀ·scale masked) · v in float64, from the block mask's dense form; slow and plain."""

    name: ClassVar[str] = "reference"
    supported_dtypes: ClassVar[frozenset[torch.dtype]] = frozenset(
        {torch.float16, torch.bfloat16, torch.float32, torch.float64}
    )
    supported_device_types: ClassVar[frozenset[str]] = frozenset({"cpu", "cuda"})
    max_scores: ClassVar[int | None] = 1 << 28

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        metadata: AttentionMetadata,
        *,
        return_lse: bool = False,
    ) -> AttentionOutput:
        group = q.shape[1] // k.shape[1]
        q64 = q.double()
        k64 = k.double().repeat_interleave(group, dim=1)
        v64 = v.double().repeat_interleave(group, dim=1)
        scale = 1.0 / math.sqrt(q.shape[-1]) if metadata.scale is None else metadata.scale
        mask = metadata.block_mask.to_dense()
        scores = (q64 @ k64.transpose(-1, -2)) * scale
        scores = scores.masked_fill(~mask, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1, keepdim=True)
        row_has_key = torch.isfinite(lse)
        weights = torch.where(row_has_key, torch.exp(scores - lse), 0.0)
        out = (weights @ v64).to(q.dtype)
        return AttentionOutput(out=out, lse=lse.squeeze(-1).float() if return_lse else None)
