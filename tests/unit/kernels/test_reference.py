"""The float64 reference reads block masks the way the kernel does and computes exact attention."""

from __future__ import annotations

import math

import pytest
import torch

from sas_runtime.block_mask import BlockMask, ElementMask, compile_block_mask
from sas_runtime.config import PatternConfig, PatternType
from sas_runtime.kernels.reference import (
    block_sparse_attention_reference,
    listed_blocks,
    visible_keys,
)

PATTERNS = [
    PatternConfig(type=PatternType.DENSE),
    PatternConfig(type=PatternType.CAUSAL),
    PatternConfig(type=PatternType.WINDOW, window=100),
    PatternConfig(type=PatternType.GLOBAL_WINDOW, window=60, global_tokens=128),
    PatternConfig(type=PatternType.DILATED, dilation=2),
]


def _qkv(batch: int, heads: int, kv_heads: int, length: int, dim: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(length * heads + dim)
    return tuple(
        torch.randn(batch, h, length, dim, generator=generator, dtype=torch.float64)
        for h in (heads, kv_heads, kv_heads)
    )


def test_listed_blocks_reads_only_the_first_count_slots() -> None:
    counts = torch.tensor([[[2, 0]]], dtype=torch.int32)
    indices = torch.tensor([[[[3, 1, 0, 2], [0, 1, 2, 3]]]], dtype=torch.int32)
    listed = listed_blocks(counts, indices, kv_blocks=4)
    assert listed.tolist() == [[[[False, True, False, True], [False, False, False, False]]]]


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.type.value)
def test_visible_keys_match_the_block_mask_grids(pattern: PatternConfig) -> None:
    mask = compile_block_mask(pattern, batch=2, q_len=333, kv_len=333)
    assert torch.equal(visible_keys(mask, batch=2, heads=3), mask.to_dense().expand(2, 3, -1, -1))


def test_padding_hides_keys_even_in_full_blocks() -> None:
    lengths = torch.tensor([200, 256], dtype=torch.int32)
    mask = compile_block_mask(PatternConfig(), batch=2, q_len=256, kv_len=256, kv_lengths=lengths)
    visible = visible_keys(mask, batch=2, heads=1)
    assert not bool(visible[0, :, :, 200:].any())
    assert bool(visible[1].all())


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.type.value)
def test_reference_equals_masked_softmax_attention(pattern: PatternConfig) -> None:
    q, k, v = _qkv(2, 4, 2, 300, 32)
    mask = compile_block_mask(pattern, batch=2, q_len=300, kv_len=300)
    out, lse = block_sparse_attention_reference(q, k, v, block_mask=mask, scale=0.2)
    dense = mask.to_dense()
    # Written out in float64 rather than through SDPA: some CPU SDPA kernels use an
    # approximate exp even for float64 (1e-10 off on one CI machine). torch.softmax itself
    # differed from the reference by 1.4e-10 in one element of 76,800 in one full-suite run of
    # 2026-12-06 (never in isolation), so the bound is 1e-9: still six orders of magnitude
    # under what the GPU kernels are held to.
    scores = (q @ k.repeat_interleave(2, dim=1).transpose(-1, -2)) * 0.2
    masked = scores.masked_fill(~dense, -math.inf)
    expected = torch.softmax(masked, dim=-1) @ v.repeat_interleave(2, dim=1)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    expected_lse = torch.logsumexp(masked, dim=-1)
    torch.testing.assert_close(lse, expected_lse, rtol=1e-9, atol=1e-9)


def test_rows_that_see_nothing_give_zero_and_minus_infinity() -> None:
    q, k, v = _qkv(1, 2, 2, 256, 16)
    partial = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    full = torch.tensor([[[[False, False], [True, False]]]])
    mask = BlockMask.from_block_grids(
        partial_blocks=partial,
        full_blocks=full,
        element_mask=ElementMask(),
        block_size=128,
        q_len=256,
        kv_len=256,
    )
    out, lse = block_sparse_attention_reference(q, k, v, block_mask=mask)
    assert bool((out[:, :, :128] == 0).all())
    assert bool((lse[:, :, :128] == -math.inf).all())
    assert bool(torch.isfinite(lse[:, :, 128:]).all())
