"""bench.kernel_targets: which rows each of the issue's targets covers, and which hold in
every file given (CPU: synthetic result rows)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.kernel_targets import evaluate, main


def _row(
    mask: str,
    *,
    seq_len: int = 16384,
    head_dim: int = 128,
    density: float = 1.0,
    graph_ms: float = 1.0,
    tflops_eager: float = 600.0,
    ratio: float = 1.0,
    flex: float | None = 2.0,
) -> dict[str, Any]:
    return {
        "seq_len": seq_len,
        "head_dim": head_dim,
        "mask": mask,
        "density": density,
        "ours_ms": 1.0,
        "ours_tflops": tflops_eager,
        "ours_graph_ms": graph_ms,
        "time_over_density_x_cudnn": ratio,
        "graph_time_over_density_x_cudnn": ratio,
        "speedup_vs_flex": flex,
        "graph_speedup_vs_flex": flex,
    }


def test_tflops_come_from_the_graph_time_and_only_long_dense_enough_d128_rows_count() -> None:
    rows = [
        _row("random-1.0", graph_ms=0.9),  # 600 eager TF in 1 ms: 667 in 0.9 ms
        _row("random-0.25", density=0.25, graph_ms=1.05),  # 571: below
        _row("random-0.1", density=0.1, graph_ms=2.0),  # density below 0.25: not covered
        _row("random-1.0", seq_len=4096, graph_ms=2.0),  # short: not covered
        _row("random-1.0", head_dim=64, graph_ms=2.0),  # D64: not covered
    ]
    tflops = evaluate([rows])[0]
    assert (tflops.covered, tflops.held) == (2, 1)
    assert list(tflops.failing) == [(128, 16384, "random-0.25")]
    assert tflops.failing[(128, 16384, "random-0.25")] == pytest.approx((571.43, 571.43), 1e-4)


def test_a_row_holds_only_if_it_holds_in_every_file_and_its_range_spans_them() -> None:
    first = [_row("random-0.5", density=0.5, ratio=1.10, flex=1.6)]
    second = [_row("random-0.5", density=0.5, ratio=1.20, flex=1.4)]
    _, density_target, flex_target, _ = evaluate([first, second])
    assert density_target.failing == {(128, 16384, "random-0.5"): (1.10, 1.20)}
    assert flex_target.failing == {(128, 16384, "random-0.5"): (1.4, 1.6)}


def test_causal_rows_meet_their_own_target_not_the_density_one() -> None:
    rows = [_row("causal", density=0.5, ratio=1.12), _row("random-0.05", density=0.05, ratio=3)]
    _, density_target, _, causal = evaluate([rows])
    assert density_target.covered == 0  # causal has its own target; 0.05 is below 0.1
    assert causal.failing == {(128, 16384, "causal"): (1.12, 1.12)}


def test_rows_without_flexattention_are_left_out_of_its_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = tmp_path / "r.json"
    result.write_text(json.dumps({"rows": [_row("random-1.0", flex=None)]}))
    assert main([str(result)]) == 0
    printed = capsys.readouterr().out
    assert ">= 1.5x FlexAttention, every density: 0 of 0 rows hold" in printed
    assert ">= 600 TFLOPS, D128, S >= 8K, density >= 0.25: 1 of 1 rows hold" in printed
