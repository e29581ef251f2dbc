"""The correctness guard on the CPU: launch checks, sampling cadence, RMSE trips, and the real
engine with faulty sparse backends injected through its backend paths."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
import torch

from sas_runtime.app import create_app
from sas_runtime.attention import BackendUnavailableError
from sas_runtime.block_mask import compile_block_mask
from sas_runtime.config import PatternConfig, PatternType, RuntimeConfig, ValidationConfig
from sas_runtime.engine import AttentionInput
from sas_runtime.model_engine import ModelEngine, build_engine, choose_device
from sas_runtime.sparse_guard import (
    FALLBACK_KERNEL_ERROR,
    SparseGuard,
    first_sample,
    launch_problems,
    rmse,
)
from tests.unit.runtime.faulty_backends import paths_with_sparse

TEXTS = ["The cat sat on the mat.", "Sparse attention skips blocks.", "hello"]


def config(**attention: Any) -> RuntimeConfig:
    return RuntimeConfig.model_validate({"server": {"device": "cpu"}, "attention": attention})


def engine_with(sparse_class: str, **attention: Any) -> ModelEngine:
    cfg = config(**attention)
    return ModelEngine(
        cfg, device=choose_device(cfg.server.device), backend_paths=paths_with_sparse(sparse_class)
    )


@pytest.fixture(scope="module")
def dense_engine() -> ModelEngine:
    return build_engine(config(backend="dense"))


def problem(length: int = 128, head_dim: int = 64) -> tuple[torch.Tensor, ...]:
    q, k, v = (torch.randn(1, 2, length, head_dim, dtype=torch.float16) for _ in range(3))
    return q, k, v


def test_launch_checks_pass_a_well_formed_problem() -> None:
    q, k, v = problem()
    mask = compile_block_mask(PatternConfig(), batch=1, q_len=128, kv_len=128)
    assert launch_problems(q, k, v, mask) == []


def test_launch_checks_name_misalignment_layout_and_mask_mismatch() -> None:
    q, k, v = problem()
    shifted = torch.zeros(q.numel() + 1, dtype=q.dtype)[1:].view(q.shape)
    transposed = torch.zeros(1, 2, 64, 128, dtype=q.dtype).transpose(-1, -2)
    mask = compile_block_mask(PatternConfig(), batch=1, q_len=128, kv_len=128)
    assert any("16-byte aligned" in p for p in launch_problems(shifted, k, v, mask))
    assert any("not contiguous" in p for p in launch_problems(transposed, k, v, mask))
    other = compile_block_mask(PatternConfig(), batch=1, q_len=256, kv_len=256)
    assert any("block mask is for 256x256" in p for p in launch_problems(q, k, v, other))
    two = compile_block_mask(
        PatternConfig(), batch=2, q_len=128, kv_len=128, kv_lengths=torch.tensor([128, 9])
    )
    assert any("does not fit batch" in p for p in launch_problems(q, k, v, two))
    assert launch_problems(q, k[:, :, :, :32], v, mask)


def test_first_sample_keeps_the_first_sequence_only() -> None:
    lengths = torch.tensor([200, 70, 130])
    mask = compile_block_mask(
        PatternConfig(type=PatternType.CAUSAL), batch=3, q_len=256, kv_len=256, kv_lengths=lengths
    )
    alone = compile_block_mask(
        PatternConfig(type=PatternType.CAUSAL),
        batch=1,
        q_len=256,
        kv_len=256,
        kv_lengths=lengths[:1],
    )
    sample = first_sample(mask)
    assert torch.equal(sample.to_dense(), alone.to_dense())
    assert sample.kv_num_blocks.shape[0] == 1


def test_guard_samples_every_nth_sparse_batch_and_trips_above_max_rmse() -> None:
    guard = SparseGuard(ValidationConfig(max_rmse=1e-3, sample_every=3))
    due = []
    for _ in range(6):
        guard.begin_sparse_batch()
        due.append(guard.sampling)
    assert due == [False, False, True, False, False, True]
    ones = torch.ones(4)
    assert guard.judge(ones, ones + 5e-4) == pytest.approx(5e-4, rel=1e-3)
    assert guard.tripped is None
    assert guard.judge(ones, ones + 0.1) == pytest.approx(0.1, rel=1e-3)
    assert guard.tripped is not None
    assert "maxRmse 0.001" in guard.tripped
    assert not guard.sampling
    assert rmse(torch.zeros(4), torch.full((4,), 2.0)) == pytest.approx(2.0)


def test_a_wrong_sparse_model_is_caught_and_the_service_switches_to_dense(
    dense_engine: ModelEngine,
) -> None:
    engine = engine_with("WrongSparseBackend", validation={"sampleEvery": 2, "maxRmse": 1e-3})
    assert engine.info.backend == "sparse"
    assert engine.info.fallback_reason is None
    encoded = engine.encode(TEXTS)
    engine.embed(encoded)
    assert engine.info.backend == "sparse"
    engine.embed(encoded)  # the second batch is sampled: RMSE 0.05 against dense
    assert engine.info.backend == "dense"
    reason = engine.info.fallback_reason
    assert reason is not None
    assert "exceeds attention.validation.maxRmse 0.001" in reason
    np.testing.assert_allclose(
        engine.embed(encoded), dense_engine.embed(dense_engine.encode(TEXTS)), atol=1e-6
    )


def test_a_raising_sparse_kernel_sends_each_batch_to_dense_and_counts_it(
    dense_engine: ModelEngine,
) -> None:
    engine = engine_with("RaisingSparseBackend")
    encoded = engine.encode(TEXTS)
    expected = dense_engine.embed(dense_engine.encode(TEXTS))
    for _ in range(3):
        np.testing.assert_allclose(engine.embed(encoded), expected, atol=1e-6)
    assert engine.info.fallback_counts == {FALLBACK_KERNEL_ERROR: 3}
    assert engine.info.backend == "sparse"
    assert engine.info.fallback_reason is None


def test_auto_runs_attention_requests_on_sparse_when_only_they_fit_and_guards_them() -> None:
    engine = engine_with("WrongSparseHead64Backend", validation={"sampleEvery": 1})
    assert engine.info.backend == "dense"  # the model's head size is 32
    assert engine.info.fallback_reason == "sparse: head size 32 not supported (supports 64)"
    q = torch.randn(1, 2, 130, 64)
    item = AttentionInput(q=q, k=q.clone(), v=q.clone())
    engine.attend([item])
    reason = engine.info.fallback_reason
    assert reason is not None
    assert reason.startswith("sparse result RMSE")
    reference = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    torch.testing.assert_close(engine.attend([item])[0], reference, atol=1e-5, rtol=1e-5)


async def test_kernel_errors_never_surface_as_5xx_and_reach_the_metric() -> None:
    engine = engine_with("RaisingSparseBackend")
    app = create_app(config(), engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://runtime") as client:
            body = {"model": engine.info.model, "input": TEXTS}
            for _ in range(2):
                assert (await client.post("/v1/embeddings", json=body)).status_code == 200
            text = (await client.get("/metrics")).text
            (card,) = (await client.get("/v1/models")).json()["data"]
    # warm-up's batches and each sequence bucket's batch of both requests went dense
    batches = engine.info.fallback_counts[FALLBACK_KERNEL_ERROR]
    assert batches >= 3
    assert f'sas_backend_fallbacks_total{{reason="{FALLBACK_KERNEL_ERROR}"}} {batches:.1f}' in text
    assert card["backend"] == "sparse"


def test_explicit_sparse_refuses_to_start_when_the_model_does_not_fit_it() -> None:
    with pytest.raises(BackendUnavailableError, match="head size 32 not supported"):
        engine_with("WrongSparseHead64Backend", backend="sparse")


def test_explicit_dense_never_sends_requests_to_sparse() -> None:
    engine = engine_with("WrongSparseHead64Backend", backend="dense")
    q = torch.randn(1, 2, 130, 64)
    (out,) = engine.attend([AttentionInput(q=q, k=q, v=q)])
    reference = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    assert engine.info.fallback_reason is None
    assert engine.guard.last_rmse is None
