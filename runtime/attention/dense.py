"""The dense backend: torch SDPA with the pattern's element mask, on any device."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor
from torch.nn import functional

from sas_runtime.attention.backend import AttentionBackend, AttentionMetadata, AttentionOutput
from sas_runtime.block_mask import BlockMask

__all__ = ["DenseBackend"]


class DenseBackend(AttentionBackend):
    """Every score is computed; the block mask becomes a boolean SDPA mask (dropped when the
    pattern allows every pair, so SDPA can take its fastest kernel)."""

    name: ClassVar[str] = "dense"
    supported_dtypes: ClassVar[frozenset[torch.dtype]] = frozenset(
        {torch.float16, torch.bfloat16, torch.float32}
    )
    supported_device_types: ClassVar[frozenset[str]] = frozenset({"cpu", "cuda"})
    max_scores: ClassVar[int | None] = 1 << 28

    def build_metadata(
        self, block_mask: BlockMask, scale: float | None = None
    ) -> AttentionMetadata:
        dense_mask = None if block_mask.allows_every_pair else block_mask.to_dense()
        return AttentionMetadata(block_mask=block_mask, scale=scale, dense_mask=dense_mask)

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        metadata: AttentionMetadata,
        *,
        return_lse: bool = False,
    ) -> AttentionOutput:
        mask = metadata.dense_mask
        grouped = q.shape[1] != k.shape[1]
        if mask is None:
            out = functional.scaled_dot_product_attention(
                q, k, v, scale=metadata.scale, enable_gqa=grouped
            )
            row_has_key = None
        else:
            row_has_key = mask.any(dim=-1, keepdim=True)
            out = functional.scaled_dot_product_attention(
                q, k, v, attn_mask=mask | ~row_has_key, scale=metadata.scale, enable_gqa=grouped
            )
            out = out.masked_fill(~row_has_key, 0.0)
        lse = _log_sum_exp(q, k, mask, metadata.scale) if return_lse else None
        return AttentionOutput(out=out, lse=lse)


def _log_sum_exp(q: Tensor, k: Tensor, mask: Tensor | None, scale: float | None) -> Tensor:
    """[B, H, Q] float32 log-sum-exp of the scaled allowed scores."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.logsumexp(scores, dim=-1)
