"""CUDA graphs and the correctness guard on the GPU: capture at warm-up, replay equal to eager,
eager beyond the buckets, and the real sparse kernel passing the guard's dense comparison."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from sas_runtime.config import RuntimeConfig
from sas_runtime.engine import AttentionInput
from sas_runtime.model_engine import build_engine

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

WORDS = [
    "sparse",
    "attention",
    "skips",
    "the",
    "blocks",
    "a",
    "pattern",
    "rules",
    "out",
    "on",
    "the",
    "gpu",
]


def texts(count: int) -> list[str]:
    return [" ".join(WORDS[: 1 + i % len(WORDS)] * (1 + i % 5)) for i in range(count)]


def test_graphs_are_captured_at_warm_up_and_replay_what_eager_computes() -> None:
    def config(graphs: dict[str, Any]) -> RuntimeConfig:
        return RuntimeConfig.model_validate(
            {"server": {"device": "cuda"}, "attention": {"cudaGraphs": graphs}}
        )

    graphed = build_engine(config({"batchSizes": [1, 4, 16]}))
    graphed.warmup()
    info = graphed.info
    assert info.cuda_graphs == 3 * 6  # batch sizes x sequence buckets 8..256
    assert info.cuda_graph_memory_bytes > 0
    assert info.warmup_seconds is not None
    eager = build_engine(config({"enabled": False}))
    eager.warmup()
    assert eager.info.cuda_graphs == 0
    batches = [texts(count) for count in (1, 3, 16, 17)]  # 17 is beyond every bucket: eager
    # The (4, 16) bucket again with other lengths: the padding mask follows each batch's lengths.
    batches += [[" ".join(WORDS[:n] * r) for n, r in ((2, 1), (12, 1), (3, 2))] for _ in (0, 1)]
    batches[-1].reverse()
    for batch_texts in batches:
        batch = graphed.encode(batch_texts)
        ours, expected = graphed.embed(batch), eager.embed(batch)
        assert ours.shape == (len(batch_texts), 384)
        assert float((ours * expected).sum(axis=1).min()) >= 0.999
        np.testing.assert_allclose(ours, expected, atol=2e-2)


def test_the_real_sparse_kernel_passes_the_guard(kernels_loaded: None) -> None:
    config = RuntimeConfig.model_validate(
        {
            "server": {"device": "cuda"},
            "attention": {
                "pattern": {"type": "window", "window": 256},
                "validation": {"sampleEvery": 1},
            },
        }
    )
    engine = build_engine(config)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(1, 16, 1024, 64, generator=generator).to(torch.bfloat16) for _ in range(3)
    )
    for _ in range(3):
        engine.attend([AttentionInput(q=q, k=k, v=v)])
    assert engine.guard.last_rmse is not None
    assert engine.guard.last_rmse < config.attention.validation.max_rmse
    assert engine.guard.tripped is None
    assert engine.info.fallback_counts == {}
