"""bench.kernel_variants' CPU parts: variant libraries named by their namespace, the output
check that keeps a wrong variant from being timed, and the summary over rows."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import kernel_variants


def test_a_variant_library_is_named_by_its_op_namespace() -> None:
    path = Path("/tmp/build/sas_kernels_sas_v22.so")
    assert kernel_variants.variant_namespace(path) == "sas_v22"
    for name in ("sas_kernels.so", "sas_kernels_v22.so", "sas_kernels_sas_V22.so"):
        with pytest.raises(ValueError, match="not a variant library"):
            kernel_variants.variant_namespace(Path(name))


def test_a_variant_whose_output_differs_is_checked_but_not_timed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    lse = torch.tensor([[[0.5, -math.inf]]])
    timed: list[str] = []

    def sustained(
        sides: dict[str, Callable[[], object]], *, passes: int, rotate: bool
    ) -> dict[str, float | None]:
        # every side takes every place in the order once
        assert (passes, rotate) == (len(sides), True)
        timed.extend(sides)
        return dict.fromkeys(sides, 1.0)

    monkeypatch.setattr(kernel_variants, "time_sustained_graphs_ms", sustained)
    calls: dict[str, Callable[[], Any]] = {
        "base": lambda: (out, lse),
        "sas_same": lambda: (out + 0.004, lse),  # a few bf16 ulps: the same result
        "sas_wrong": lambda: (-out, lse),
        "sas_nan": lambda: (out, torch.tensor([[[0.5, math.nan]]])),
    }
    times, differences = kernel_variants.bench_row(calls, lambda: None)
    assert timed == ["base", "sas_same", "sas_nan", "cudnn_dense"]
    assert times["sas_wrong"] is None
    assert differences["sas_same"][0] == pytest.approx(0.004, abs=1e-6)
    assert differences["sas_wrong"][0] == pytest.approx(2.0)
    # a NaN where base has -inf is a difference in the LSE, reported as such
    assert differences["sas_nan"] == (0.0, math.inf)


def test_the_summary_is_each_variants_geometric_mean_over_the_rows_it_was_timed_on() -> None:
    rows: list[dict[str, Any]] = [
        {"variants": {"sas_a": {"over_base": 0.9}, "sas_b": {"over_base": None}}},
        {"variants": {"sas_a": {"over_base": 1.0 / 0.9}, "sas_b": {"over_base": 1.1}}},
    ]
    summary = kernel_variants.summarise(rows, ["sas_a", "sas_b"])
    assert summary["sas_a"] == pytest.approx(1.0)
    assert summary["sas_b"] == pytest.approx(1.1)
    assert kernel_variants.summarise([], ["sas_a"]) == {"sas_a": None}
