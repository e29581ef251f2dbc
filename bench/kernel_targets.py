"""The issue's four kernel targets, read from one or more `bench.kernel` result JSONs of one
kernel: for each target the rows it covers, how many hold in every file, and each failing row's
range over the files.

    python -m bench.kernel_targets RESULT.json [RESULT.json ...] [--eager]

Read from the CUDA-graph figures (`*_graph_ms`) unless `--eager`:
- >= 600 TFLOPS on computed blocks at D128, S >= 8K, density >= 0.25;
- time <= 1.15 x density x cuDNN dense time, density >= 0.1 (every mask but causal);
- >= 1.5x FlexAttention on the same mask, every row;
- causal within 10% of cuDNN causal.
A row missing a figure (no FlexAttention, no graph) is left out of that target.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RowKey = tuple[int, int, str]
Row = dict[str, Any]


def _tflops(row: Row, *, eager: bool) -> float | None:
    # ours_tflops counts the computed blocks' flops over the eager time; the same flops over the
    # graph time give the graph figure (older results lack ours_graph_tflops).
    if eager:
        return float(row["ours_tflops"])
    if not row.get("ours_graph_ms"):
        return None
    return float(row["ours_tflops"]) * float(row["ours_ms"]) / float(row["ours_graph_ms"])


def _time_over_density_cudnn(row: Row, *, eager: bool) -> float | None:
    value = (
        row["time_over_density_x_cudnn"] if eager else row.get("graph_time_over_density_x_cudnn")
    )
    return None if value is None else float(value)


def _speedup_vs_flex(row: Row, *, eager: bool) -> float | None:
    value = row.get("speedup_vs_flex") if eager else row.get("graph_speedup_vs_flex")
    return None if value is None else float(value)


@dataclass(frozen=True)
class Target:
    name: str
    covers: Callable[[Row], bool]
    figure: Callable[..., float | None]
    holds: Callable[[float], bool]


TARGETS = (
    Target(
        ">= 600 TFLOPS, D128, S >= 8K, density >= 0.25",
        lambda r: r["head_dim"] == 128 and r["seq_len"] >= 8192 and r["density"] >= 0.25,
        _tflops,
        lambda v: v >= 600,
    ),
    Target(
        "time <= 1.15 x density x cuDNN dense, density >= 0.1",
        lambda r: r["mask"] != "causal" and r["density"] >= 0.1,
        _time_over_density_cudnn,
        lambda v: v <= 1.15,
    ),
    Target(
        ">= 1.5x FlexAttention, every density",
        lambda r: True,
        _speedup_vs_flex,
        lambda v: v >= 1.5,
    ),
    Target(
        "causal within 10% of cuDNN causal",
        lambda r: r["mask"] == "causal",
        _time_over_density_cudnn,
        lambda v: v <= 1.10,
    ),
)


@dataclass(frozen=True)
class Outcome:
    target: str
    covered: int
    held: int
    failing: dict[RowKey, tuple[float, float]]  # row -> (min, max) over the files


def evaluate(files: list[list[Row]], *, eager: bool = False) -> list[Outcome]:
    outcomes = []
    for target in TARGETS:
        figures: dict[RowKey, list[float]] = {}
        for rows in files:
            for row in rows:
                if not target.covers(row):
                    continue
                value = target.figure(row, eager=eager)
                if value is not None:
                    key = (int(row["head_dim"]), int(row["seq_len"]), str(row["mask"]))
                    figures.setdefault(key, []).append(value)
        failing = {
            key: (min(values), max(values))
            for key, values in sorted(figures.items())
            if not all(target.holds(v) for v in values)
        }
        outcomes.append(Outcome(target.name, len(figures), len(figures) - len(failing), failing))
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--eager", action="store_true", help="read the eager figures")
    args = parser.parse_args(argv)
    files = [json.loads(path.read_text())["rows"] for path in args.results]
    for outcome in evaluate(files, eager=args.eager):
        print(f"{outcome.target}: {outcome.held} of {outcome.covered} rows hold in every file")
        for (head_dim, seq_len, mask), (low, high) in outcome.failing.items():
            spread = f"{low:.2f}" if low == high else f"{low:.2f}-{high:.2f}"
            print(f"  not held: D{head_dim} S{seq_len} {mask}: {spread}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
