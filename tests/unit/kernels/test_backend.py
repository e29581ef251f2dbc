"""The `sparse` backend says why it cannot run; `auto` then falls back to dense with the reason."""

from __future__ import annotations

import torch

from sas_runtime.attention import AttentionSpec, select_backend
from sas_runtime.attention.dense import DenseBackend
from sas_runtime.config import AttentionBackendName, PatternConfig
from sas_runtime.kernels.backend import SparseBackend


def _spec(
    *,
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    head_dim: int = 128,
    block_size: int = 128,
) -> AttentionSpec:
    return AttentionSpec(
        device=torch.device(device),
        dtype=dtype,
        head_dim=head_dim,
        num_heads=8,
        num_kv_heads=2,
        pattern=PatternConfig(block_size=block_size),  # type: ignore[arg-type]
    )


def test_declares_what_the_kernel_supports() -> None:
    assert SparseBackend.name == "sparse"
    assert SparseBackend.supported_dtypes == frozenset({torch.bfloat16, torch.float16})
    assert SparseBackend.supported_head_sizes == frozenset({64, 128})
    assert SparseBackend.min_compute_capability == (9, 0)


def test_reasons_name_each_unsupported_choice() -> None:
    reasons = SparseBackend.validate_configuration(
        _spec(device="cpu", dtype=torch.float32, head_dim=96, block_size=64)
    )
    text = "; ".join(reasons)
    assert "device 'cpu' not supported" in text
    assert "dtype float32 not supported" in text
    assert "head size 96 not supported" in text
    assert "block size 64 not supported" in text


def test_without_a_hopper_gpu_or_build_cuda_specs_get_a_reason() -> None:
    reasons = SparseBackend.validate_configuration(_spec())
    if not torch.cuda.is_available():
        assert reasons
        assert any("not built" in r or "no CUDA device" in r for r in reasons)


def test_auto_falls_back_to_dense_and_says_why() -> None:
    selection = select_backend(AttentionBackendName.AUTO, _spec(device="cpu"))
    assert isinstance(selection.backend, DenseBackend)
    assert "sparse" in selection.skipped
    assert selection.fallback_reason is not None
    assert "sparse" in selection.fallback_reason
