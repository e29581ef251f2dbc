"""The dense backend against the float64 reference: every pattern, GQA, ragged lengths, LSE."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from sas_runtime.attention.backend import AttentionMetadata
from sas_runtime.attention.dense import DenseBackend
from sas_runtime.attention.reference import ReferenceBackend
from sas_runtime.block_mask import compile_block_mask
from sas_runtime.config import PatternConfig, PatternType

PATTERNS = [
    PatternConfig(type=PatternType.DENSE, block_size=64),
    PatternConfig(type=PatternType.CAUSAL, block_size=64),
    PatternConfig(type=PatternType.WINDOW, block_size=64, window=37),
    PatternConfig(type=PatternType.GLOBAL_WINDOW, block_size=64, window=20, global_tokens=64),
    PatternConfig(type=PatternType.DILATED, block_size=64, dilation=2),
    PatternConfig(type=PatternType.DOCUMENT, block_size=64),
    PatternConfig(type=PatternType.TOPK, block_size=64, top_k=2),
    PatternConfig(type=PatternType.CAUSAL, block_size=128),
]


def rmse(actual: Tensor, expected: Tensor) -> float:
    return float((actual.double() - expected.double()).pow(2).mean().sqrt())


def qkv(
    batch: int, heads: int, kv_heads: int, q_len: int, kv_len: int, dim: int, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, dim, generator=generator)
    k = torch.randn(batch, kv_heads, kv_len, dim, generator=generator)
    v = torch.randn(batch, kv_heads, kv_len, dim, generator=generator)
    return q, k, v


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: f"{p.type.value}-{p.block_size}")
@pytest.mark.parametrize(
    ("heads", "kv_heads", "length", "ragged"),
    [(4, 4, 128, False), (4, 2, 200, True), (6, 1, 77, True), (2, 2, 257, False)],
)
def test_dense_matches_reference(
    pattern: PatternConfig,
    heads: int,
    kv_heads: int,
    length: int,
    ragged: bool,
    record_property: Any,
) -> None:
    batch = 2
    q, k, v = qkv(batch, heads, kv_heads, length, length, 32, seed=length)
    kv_lengths = torch.tensor([length, max(1, length // 3)]) if ragged else None
    document_ids = None
    if pattern.type is PatternType.DOCUMENT:
        document_ids = (torch.arange(length) * 3 // length).expand(batch, length)
    mask = compile_block_mask(
        pattern,
        batch=batch,
        q_len=length,
        kv_len=length,
        kv_lengths=kv_lengths,
        document_ids=document_ids,
        q=q,
        k=k,
    )
    dense, reference = DenseBackend(), ReferenceBackend()
    got = dense.forward(q, k, v, dense.build_metadata(mask), return_lse=True)
    want = reference.forward(q, k, v, reference.build_metadata(mask), return_lse=True)
    error = rmse(got.out, want.out)
    record_property("rmse", error)
    print(f"{pattern.type.value} H{heads}/{kv_heads} S{length}: RMSE {error:.2e}")
    assert got.out.shape == q.shape
    assert got.out.dtype == q.dtype
    assert error <= 1e-6
    torch.testing.assert_close(got.out, want.out, atol=2e-6, rtol=1e-5)
    assert got.lse is not None
    assert want.lse is not None
    torch.testing.assert_close(got.lse, want.lse, atol=1e-5, rtol=1e-5)


def test_reference_is_softmax_attention_written_out() -> None:
    q, k, v = qkv(1, 1, 1, 3, 3, 4, seed=1)
    mask = compile_block_mask(PatternConfig(type=PatternType.CAUSAL), batch=1, q_len=3, kv_len=3)
    out = ReferenceBackend().forward(q, k, v, AttentionMetadata(block_mask=mask)).out
    for row in range(3):
        scores = [float(q[0, 0, row] @ k[0, 0, col]) / 2.0 for col in range(row + 1)]
        weights = torch.tensor(scores, dtype=torch.float64).softmax(dim=0)
        expected = (weights.view(-1, 1) * v[0, 0, : row + 1].double()).sum(dim=0)
        torch.testing.assert_close(out[0, 0, row].double(), expected, atol=1e-6, rtol=1e-6)


def test_rows_without_any_allowed_key_are_zero_with_minus_infinite_lse() -> None:
    # Positions 2 and 3 belong to document 1, whose keys are all padding.
    q, k, v = qkv(1, 2, 2, 4, 4, 8, seed=2)
    mask = compile_block_mask(
        PatternConfig(type=PatternType.DOCUMENT, block_size=64),
        batch=1,
        q_len=4,
        kv_len=4,
        kv_lengths=torch.tensor([2]),
        document_ids=torch.tensor([[0, 0, 1, 1]]),
    )
    for backend in (DenseBackend(), ReferenceBackend()):
        result = backend.forward(q, k, v, backend.build_metadata(mask), return_lse=True)
        assert torch.isfinite(result.out).all()
        assert torch.equal(result.out[:, :, 2:], torch.zeros_like(result.out[:, :, 2:]))
        assert result.lse is not None
        assert torch.isneginf(result.lse[:, :, 2:]).all()
        assert torch.isfinite(result.lse[:, :, :2]).all()


def test_dense_without_a_mask_when_every_pair_is_allowed() -> None:
    mask = compile_block_mask(PatternConfig(), batch=1, q_len=70, kv_len=70)
    assert DenseBackend().build_metadata(mask).dense_mask is None
    padded = compile_block_mask(
        PatternConfig(), batch=1, q_len=70, kv_len=70, kv_lengths=torch.tensor([50])
    )
    dense_mask = DenseBackend().build_metadata(padded).dense_mask
    assert dense_mask is not None
    assert int(dense_mask.sum()) == 70 * 50


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dense_half_precision_stays_close_to_reference(dtype: torch.dtype) -> None:
    q, k, v = qkv(1, 4, 2, 150, 150, 64, seed=3)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    mask = compile_block_mask(
        PatternConfig(type=PatternType.WINDOW, window=40, block_size=64),
        batch=1,
        q_len=150,
        kv_len=150,
    )
    got = DenseBackend().forward(q, k, v, DenseBackend().build_metadata(mask)).out
    want = ReferenceBackend().forward(q, k, v, ReferenceBackend().build_metadata(mask)).out
    assert got.dtype == dtype
    assert rmse(got, want) <= 1e-2


@pytest.mark.parametrize(
    "pattern",
    [p for p in PATTERNS if p.type is not PatternType.DOCUMENT],
    ids=lambda p: f"{p.type.value}-{p.block_size}",
)
@pytest.mark.parametrize(("q_len", "kv_len"), [(70, 200), (300, 65)])
def test_dense_matches_reference_when_query_and_key_lengths_differ(
    pattern: PatternConfig, q_len: int, kv_len: int, record_property: Any
) -> None:
    q, k, v = qkv(2, 4, 2, q_len, kv_len, 16, seed=q_len + kv_len)
    mask = compile_block_mask(
        pattern,
        batch=2,
        q_len=q_len,
        kv_len=kv_len,
        kv_lengths=torch.tensor([kv_len, kv_len // 2]),
        q=q,
        k=k,
    )
    dense, reference = DenseBackend(), ReferenceBackend()
    got = dense.forward(q, k, v, dense.build_metadata(mask)).out
    want = reference.forward(q, k, v, reference.build_metadata(mask)).out
    error = rmse(got, want)
    record_property("rmse", error)
    assert got.shape == q.shape
    assert error <= 1e-6
