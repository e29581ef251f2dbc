"""The A/B summary: variant over base, each normalised to its own run's cuDNN dense time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.kernel_ab_summary import Normalised, load, main, normalised_time, ratios


def _row(mask: str, ours: float, cudnn: float, graph: bool = True) -> dict[str, object]:
    return {
        "head_dim": 128,
        "seq_len": 4096,
        "mask": mask,
        "ours_ms": ours * 2,
        "cudnn_dense_ms": cudnn * 2,
        "ours_graph_ms": ours if graph else None,
        "cudnn_dense_graph_ms": cudnn if graph else None,
    }


def _write(directory: Path, name: str, rows: list[dict[str, object]]) -> None:
    (directory / name).write_text(json.dumps({"environment": {}, "rows": rows}))


def test_each_row_is_normalised_eager_and_graph() -> None:
    assert normalised_time(_row("causal", 1.0, 4.0)) == Normalised(eager=0.25, graph=0.25)
    assert normalised_time(_row("causal", 3.0, 4.0, graph=False)) == Normalised(0.75, None)


def test_ratios_pair_each_pass_with_the_base_of_the_same_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path, "base-d128-pass1.json", [_row("causal", 1.0, 2.0)])
    _write(tmp_path, "base-d128-pass2.json", [_row("causal", 1.0, 4.0)])
    # Variant: a faster cuDNN in pass 1 (normalisation shows it); pass 2 was not replayed, so it
    # counts for eager only and is never set against the base's graph time.
    _write(tmp_path, "kernel-v14-x-d128-pass1.json", [_row("causal", 0.9, 2.0)])
    _write(tmp_path, "kernel-v14-x-d128-pass2.json", [_row("causal", 1.2, 4.0, graph=False)])
    (tmp_path / "kernel-v14-x-tests.txt").write_text("37 passed")
    sides = load(tmp_path)
    assert set(sides) == {"base", "kernel-v14-x"}
    found = ratios(sides, "kernel-v14-x")[(128, 4096, "causal")]
    assert found.eager == pytest.approx([0.9, 1.2])
    assert found.graph == pytest.approx([0.9])
    assert main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "kernel-v14-x over base" in printed
    assert "D128 S  4096 causal" in printed
    assert "0.900 (0.900)" in printed
    assert "1.050 (0.900 1.200)" in printed


def test_no_base_is_an_error(tmp_path: Path) -> None:
    assert main([str(tmp_path)]) == 1


def test_winners_are_faster_overall_and_nowhere_slower_beyond_noise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [_row("causal", 1.0, 2.0), _row("window", 1.0, 2.0)]
    _write(tmp_path, "base-d128-pass1.json", base)
    # faster on one row, equal on the other: adopted
    _write(
        tmp_path, "kernel-a-d128-pass1.json", [_row("causal", 0.9, 2.0), _row("window", 1.0, 2.0)]
    )
    # much faster on one row but 8% slower on the other: not adopted
    _write(
        tmp_path, "kernel-b-d128-pass1.json", [_row("causal", 0.7, 2.0), _row("window", 1.08, 2.0)]
    )
    # within noise both ways, no gain overall: not adopted
    _write(
        tmp_path, "kernel-c-d128-pass1.json", [_row("causal", 0.98, 2.0), _row("window", 1.03, 2.0)]
    )
    # no graph replay: judged on eager times (slower by the cuDNN normalisation: 1.0/2 vs 1.0/1.6)
    _write(
        tmp_path,
        "kernel-d-d128-pass1.json",
        [_row("causal", 1.0, 1.6, graph=False), _row("window", 1.0, 2.0, graph=False)],
    )
    assert main([str(tmp_path), "--winners"]) == 0
    assert capsys.readouterr().out.strip() == "kernel-a"
