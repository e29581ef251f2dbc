"""Pure-torch float64 reference of the block-sparse attention forward, the kernel's ground truth.

It reads a block mask the way the kernel does, from its count/index tensors (FlexAttention's
layout), not from its boolean grids: a key is visible to a query when its block is listed as
full for the query's block (and the key lies within the sequence's valid length), or listed as
partial and the element mask allows the pair. Rows that see no key give output 0 and
log-sum-exp -inf.
"""

from __future__ import annotations

import math

import torch

from sas_runtime.block_mask import BlockMask

__all__ = ["block_sparse_attention_reference", "listed_blocks", "visible_keys"]


def listed_blocks(num_blocks: torch.Tensor, indices: torch.Tensor, kv_blocks: int) -> torch.Tensor:
    """[B, H, QB, KB] bool: the blocks each (b, h, q-block) row lists in its first `num` slots."""
    num_blocks, indices = num_blocks.cpu().long(), indices.cpu().long()
    listed = torch.zeros(*indices.shape[:-1], kv_blocks + 1, dtype=torch.bool)
    slot = torch.arange(indices.shape[-1])
    target = torch.where(slot < num_blocks[..., None], indices, kv_blocks)
    listed.scatter_(-1, target, True)
    return listed[..., :kv_blocks]


def visible_keys(block_mask: BlockMask, *, batch: int, heads: int) -> torch.Tensor:
    """[batch, heads, q_len, kv_len] bool: the keys each query sees under `block_mask`."""
    size, q_len, kv_len = block_mask.block_size, block_mask.q_len, block_mask.kv_len
    kv_blocks = math.ceil(kv_len / size)
    full = listed_blocks(block_mask.full_kv_num_blocks, block_mask.full_kv_indices, kv_blocks)
    partial = listed_blocks(block_mask.kv_num_blocks, block_mask.kv_indices, kv_blocks)

    def per_element(blocks: torch.Tensor) -> torch.Tensor:
        rows = blocks.repeat_interleave(size, dim=-2)[..., :q_len, :]
        return rows.repeat_interleave(size, dim=-1)[..., :kv_len].expand(
            batch, heads, q_len, kv_len
        )

    element_mask = block_mask.element_mask
    element = element_mask.to_dense(batch, q_len, kv_len, torch.device("cpu"))[:, None]
    key_in_range = torch.ones(batch, 1, 1, kv_len, dtype=torch.bool)
    if element_mask.kv_lengths is not None:
        lengths = element_mask.kv_lengths.cpu().view(batch, 1, 1, 1)
        key_in_range = torch.arange(kv_len).view(1, 1, 1, kv_len) < lengths
    return (per_element(full) & key_in_range) | (per_element(partial) & element)


def block_sparse_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    block_mask: BlockMask,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention on the CPU in float64.

    q: [B, Hq, Sq, D]; k, v: [B, Hkv, Sk, D] with Hq a multiple of Hkv (GQA).
    Returns (out [B, Hq, Sq, D] float64, lse [B, Hq, Sq] float64, natural log).
    """
    batch, heads, _, head_dim = q.shape
    group = heads // k.shape[1]
    q64 = q.detach().to("cpu", torch.float64)
    k64 = k.detach().to("cpu", torch.float64).repeat_interleave(group, dim=1)
    v64 = v.detach().to("cpu", torch.float64).repeat_interleave(group, dim=1)
    visible = visible_keys(block_mask.to(torch.device("cpu")), batch=batch, heads=heads)
    softmax_scale = scale if scale is not None else head_dim**-0.5
    scores = (q64 @ k64.transpose(-1, -2)) * softmax_scale
    scores = scores.masked_fill(~visible, -math.inf)
    lse = torch.logsumexp(scores, dim=-1)
    seen = torch.isfinite(lse)
    probs = torch.exp(scores - torch.where(seen, lse, 0.0)[..., None])
    return probs @ v64, lse
