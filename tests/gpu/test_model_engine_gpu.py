"""The real engine and block masks on a CUDA device: same answers as on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sas_runtime.block_mask import compile_block_mask
from sas_runtime.config import PatternConfig, PatternType, RuntimeConfig
from sas_runtime.engine import AttentionInput
from sas_runtime.model_engine import build_engine

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TEXTS = [
    "hello",
    "Sparse attention skips blocks that a pattern rules out.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "word " * 400,
    "",
]

PATTERNS = [
    PatternConfig(type=PatternType.DENSE),
    PatternConfig(type=PatternType.CAUSAL, block_size=64),
    PatternConfig(type=PatternType.GLOBAL_WINDOW, window=100, global_tokens=128),
    PatternConfig(type=PatternType.DILATED, dilation=2, block_size=64),
    PatternConfig(type=PatternType.TOPK, top_k=2, block_size=64),
]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_gpu_embeddings_match_the_cpu(dtype: str) -> None:
    cpu = build_engine(RuntimeConfig.model_validate({"server": {"device": "cpu"}}))
    gpu = build_engine(
        RuntimeConfig.model_validate({"server": {"device": "cuda"}, "attention": {"dtype": dtype}})
    )
    gpu.warmup()
    assert gpu.info.device == "cuda"
    assert gpu.info.dtype == dtype
    ours = gpu.embed(gpu.encode(TEXTS))
    expected = cpu.embed(cpu.encode(TEXTS))
    assert ours.dtype == np.float32
    cosine = (ours * expected).sum(axis=1)
    assert float(cosine.min()) >= 0.999


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.type.value)
def test_block_masks_on_the_gpu_equal_those_on_the_cpu(pattern: PatternConfig) -> None:
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 700, 32, generator=generator)
    k = torch.randn(2, 2, 700, 32, generator=generator)
    lengths = torch.tensor([700, 333])
    on_cpu = compile_block_mask(
        pattern, batch=2, q_len=700, kv_len=700, kv_lengths=lengths, q=q, k=k
    )
    on_gpu = compile_block_mask(
        pattern,
        batch=2,
        q_len=700,
        kv_len=700,
        kv_lengths=lengths.cuda(),
        q=q.cuda(),
        k=k.cuda(),
    )
    assert on_gpu.kv_indices.device.type == "cuda"
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
        assert torch.equal(getattr(on_gpu, name).cpu(), getattr(on_cpu, name)), name


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.type.value)
def test_gpu_attention_requests_with_gqa_match_the_cpu(pattern: PatternConfig) -> None:
    cpu = build_engine(RuntimeConfig.model_validate({"server": {"device": "cpu"}}))
    gpu = build_engine(RuntimeConfig.model_validate({"server": {"device": "cuda"}}))
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(2, 8, 500, 64, generator=generator)
    k, v = (torch.randn(2, 2, 500, 64, generator=generator) for _ in range(2))
    request = [AttentionInput(q=q, k=k, v=v, pattern=pattern)]
    (expected,) = cpu.attend(request)
    (ours,) = gpu.attend(request)
    assert ours.device.type == "cpu"
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, atol=2e-3, rtol=2e-3)
    half = [AttentionInput(q=q.bfloat16(), k=k.bfloat16(), v=v.bfloat16(), pattern=pattern)]
    (ours_half,) = gpu.attend(half)
    assert ours_half.dtype == torch.bfloat16
    assert float((ours_half.float() - expected).pow(2).mean().sqrt()) <= 1e-2
