"""Backend choice: explicit choices raise with reasons, `auto` falls back and says why."""

from __future__ import annotations

import pytest
import torch

from sas_runtime.attention import (
    AUTO_PRIORITY,
    BACKEND_PATHS,
    AttentionSpec,
    BackendUnavailableError,
    backend_reasons,
    load_backend_class,
    select_backend,
)
from sas_runtime.attention.dense import DenseBackend
from sas_runtime.attention.reference import ReferenceBackend
from sas_runtime.config import AttentionBackendName, PatternConfig

CPU = torch.device("cpu")
SPARSE, DENSE, REFERENCE, AUTO = (
    AttentionBackendName.SPARSE,
    AttentionBackendName.DENSE,
    AttentionBackendName.REFERENCE,
    AttentionBackendName.AUTO,
)
NOT_BUILT = "sas_runtime.kernels.not_built_extension:SparseBackend"


def spec(
    dtype: torch.dtype = torch.float32,
    head_dim: int = 64,
    heads: int = 8,
    kv_heads: int = 8,
    device: torch.device = CPU,
) -> AttentionSpec:
    return AttentionSpec(
        device=device,
        dtype=dtype,
        head_dim=head_dim,
        num_heads=heads,
        num_kv_heads=kv_heads,
        pattern=PatternConfig(),
    )


def test_names_map_to_backends_and_auto_prefers_sparse() -> None:
    assert set(BACKEND_PATHS) == {SPARSE, DENSE, REFERENCE}
    assert BACKEND_PATHS[SPARSE] == "sas_runtime.kernels.backend:SparseBackend"
    assert AUTO_PRIORITY == (SPARSE, DENSE)
    assert load_backend_class(DENSE) is DenseBackend
    assert load_backend_class(REFERENCE) is ReferenceBackend


def test_a_missing_kernel_build_is_a_reason_not_an_import_error() -> None:
    paths = {**BACKEND_PATHS, SPARSE: NOT_BUILT}
    backend_class, reasons = backend_reasons(SPARSE, spec(), paths)
    assert backend_class is None
    assert reasons == [
        "kernel extension not built (sas_runtime.kernels.not_built_extension is missing)"
    ]


def test_a_module_without_the_class_is_a_reason() -> None:
    paths = {**BACKEND_PATHS, SPARSE: "sas_runtime.attention.registry:SparseBackend"}
    _, reasons = backend_reasons(SPARSE, spec(), paths)
    assert reasons == [
        "sas_runtime.attention.registry has no attention backend class SparseBackend"
    ]


def test_explicit_choice_that_cannot_run_raises_with_its_reasons() -> None:
    paths = {**BACKEND_PATHS, SPARSE: NOT_BUILT}
    with pytest.raises(BackendUnavailableError, match="kernel extension not built") as caught:
        select_backend(SPARSE, spec(), paths)
    assert caught.value.name == "sparse"
    with pytest.raises(BackendUnavailableError, match="dtype float64 not supported"):
        select_backend(DENSE, spec(dtype=torch.float64))


def test_explicit_choice_that_can_run_serves_without_fallback() -> None:
    selection = select_backend(REFERENCE, spec(dtype=torch.float64))
    assert isinstance(selection.backend, ReferenceBackend)
    assert selection.fallback_reason is None
    assert selection.skipped == {}


def test_auto_falls_back_to_dense_and_records_why() -> None:
    paths = {**BACKEND_PATHS, SPARSE: NOT_BUILT}
    selection = select_backend(AUTO, spec(), paths)
    assert isinstance(selection.backend, DenseBackend)
    reason = "kernel extension not built (sas_runtime.kernels.not_built_extension is missing)"
    assert selection.skipped == {"sparse": [reason]}
    assert selection.fallback_reason == f"sparse: {reason}"


def test_auto_takes_the_first_candidate_that_can_run() -> None:
    paths = {**BACKEND_PATHS, SPARSE: BACKEND_PATHS[REFERENCE]}
    selection = select_backend(AUTO, spec(), paths)
    assert isinstance(selection.backend, ReferenceBackend)
    assert selection.fallback_reason is None


def test_auto_with_the_real_registry_on_the_cpu_serves_dense() -> None:
    selection = select_backend(AUTO, spec())
    assert isinstance(selection.backend, DenseBackend)
    assert selection.skipped["sparse"]
    assert selection.fallback_reason is not None
    assert selection.fallback_reason.startswith("sparse: ")


def test_auto_raises_when_no_candidate_can_run() -> None:
    paths = {**BACKEND_PATHS, SPARSE: NOT_BUILT}
    with pytest.raises(
        BackendUnavailableError, match="sparse: kernel extension not built"
    ) as caught:
        select_backend(AUTO, spec(dtype=torch.float64), paths)
    assert any(reason.startswith("dense: dtype float64") for reason in caught.value.reasons)


def test_validate_configuration_explains_each_problem() -> None:
    reasons = DenseBackend.validate_configuration(
        spec(dtype=torch.int8, heads=6, kv_heads=4, device=torch.device("meta"))
    )
    assert reasons == [
        "device 'meta' not supported (supports cpu, cuda)",
        "dtype int8 not supported (supports bfloat16, float16, float32)",
        "query heads (6) must be a multiple of kv heads (4)",
    ]
    assert DenseBackend.validate_configuration(spec(heads=8, kv_heads=2)) == []


def test_head_size_and_compute_capability_limits_are_reasons() -> None:
    class Hopper(DenseBackend):
        supported_head_sizes = frozenset({64, 128})
        min_compute_capability = (9, 0)

    assert Hopper.validate_configuration(spec(head_dim=32)) == [
        "head size 32 not supported (supports 64, 128)"
    ]
