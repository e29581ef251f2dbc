"""Variant over base from a `bench/kernel_ab.sh` run: per (head dim, sequence length, mask),
each side's kernel time normalised to its own run's cuDNN dense time (graph replay where both
were captured, else eager), variant over base, for each pass and their mean.

    python -m bench.kernel_ab_summary OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path
from typing import Any

RESULT = re.compile(r"^(?P<side>.+)-d(?P<head_dim>\d+)-pass(?P<pass_>\d+)\.json$")
RowKey = tuple[int, int, str]


def normalised_time(row: dict[str, Any]) -> float:
    """Our time over cuDNN dense time in the same run: graph replay when both have one."""
    if row.get("ours_graph_ms") and row.get("cudnn_dense_graph_ms"):
        return float(row["ours_graph_ms"]) / float(row["cudnn_dense_graph_ms"])
    return float(row["ours_ms"]) / float(row["cudnn_dense_ms"])


def load(out_dir: Path) -> dict[str, dict[int, dict[RowKey, float]]]:
    """side -> pass -> row key -> normalised time."""
    sides: dict[str, dict[int, dict[RowKey, float]]] = {}
    for path in sorted(out_dir.glob("*.json")):
        match = RESULT.match(path.name)
        if match is None:
            continue
        rows = json.loads(path.read_text())["rows"]
        passes = sides.setdefault(match["side"], {})
        table = passes.setdefault(int(match["pass_"]), {})
        for row in rows:
            table[(int(row["head_dim"]), int(row["seq_len"]), str(row["mask"]))] = normalised_time(
                row
            )
    return sides


def ratios(
    sides: dict[str, dict[int, dict[RowKey, float]]], variant: str
) -> dict[RowKey, list[float]]:
    """Row key -> variant/base per pass that both ran."""
    found: dict[RowKey, list[float]] = {}
    for pass_, table in sorted(sides[variant].items()):
        base = sides.get("base", {}).get(pass_, {})
        for key, value in table.items():
            if key in base:
                found.setdefault(key, []).append(value / base[key])
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    sides = load(args.out_dir)
    if "base" not in sides:
        print(f"no base results under {args.out_dir}")
        return 1
    for variant in sorted(set(sides) - {"base"}):
        print(f"{variant} over base (normalised to each run's cuDNN dense time; < 1 is faster)")
        for key, values in sorted(ratios(sides, variant).items()):
            head_dim, seq_len, mask = key
            passes = " ".join(f"{v:.3f}" for v in values)
            print(
                f"  D{head_dim} S{seq_len:>6} {mask:<14} mean {statistics.fmean(values):.3f}"
                f"  passes {passes}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
