"""Variant over base from a `bench/kernel_ab.sh` run: per (head dim, sequence length, mask),
each side's kernel time normalised to its own run's cuDNN dense time, variant over base, for
each pass and their mean, from graph replays (where both sides have them) and from eager calls.

    python -m bench.kernel_ab_summary OUT_DIR [--winners]

`--winners` prints instead, comma-separated, the variants that the notes' rule adopts: no row
slower than base beyond the noise (mean ratio over passes at most 1.05) and faster over all rows
(geometric mean of the row means below 0.99), from graph replays where a row has them.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULT = re.compile(r"^(?P<side>.+)-d(?P<head_dim>\d+)-pass(?P<pass_>\d+)\.json$")
RowKey = tuple[int, int, str]


@dataclass(frozen=True)
class Normalised:
    """Our time over cuDNN dense time in the same run, eager and (if captured) graph replay."""

    eager: float
    graph: float | None


@dataclass(frozen=True)
class Ratios:
    """Variant over base per pass; graph only for passes where both sides were replayed."""

    eager: list[float]
    graph: list[float]


def normalised_time(row: dict[str, Any]) -> Normalised:
    graph = None
    if row.get("ours_graph_ms") and row.get("cudnn_dense_graph_ms"):
        graph = float(row["ours_graph_ms"]) / float(row["cudnn_dense_graph_ms"])
    return Normalised(float(row["ours_ms"]) / float(row["cudnn_dense_ms"]), graph)


def load(out_dir: Path) -> dict[str, dict[int, dict[RowKey, Normalised]]]:
    """side -> pass -> row key -> normalised times."""
    sides: dict[str, dict[int, dict[RowKey, Normalised]]] = {}
    for path in sorted(out_dir.glob("*.json")):
        match = RESULT.match(path.name)
        if match is None:
            continue
        rows = json.loads(path.read_text())["rows"]
        table = sides.setdefault(match["side"], {}).setdefault(int(match["pass_"]), {})
        for row in rows:
            key = (int(row["head_dim"]), int(row["seq_len"]), str(row["mask"]))
            table[key] = normalised_time(row)
    return sides


def ratios(
    sides: dict[str, dict[int, dict[RowKey, Normalised]]], variant: str
) -> dict[RowKey, Ratios]:
    """Row key -> variant/base per pass that both ran."""
    found: dict[RowKey, Ratios] = {}
    for pass_, table in sorted(sides[variant].items()):
        base = sides.get("base", {}).get(pass_, {})
        for key, ours in table.items():
            if key not in base:
                continue
            entry = found.setdefault(key, Ratios([], []))
            entry.eager.append(ours.eager / base[key].eager)
            base_graph = base[key].graph
            if ours.graph is not None and base_graph is not None:
                entry.graph.append(ours.graph / base_graph)
    return found


NOISE = 1.05
"""Row ratios up to this are within the run-to-run spread of one machine (KERNEL_NOTES.md)."""
GAIN = 0.99
"""A variant must beat base by this much over all rows to be worth its code."""


def wins(found: dict[RowKey, Ratios]) -> bool:
    """Whether a variant's rows (variant over base) meet the adoption rule."""
    means = [statistics.fmean(r.graph or r.eager) for r in found.values() if r.graph or r.eager]
    return bool(means) and max(means) <= NOISE and statistics.geometric_mean(means) < GAIN


def _column(values: list[float]) -> str:
    if not values:
        return f"{'-':>5} {'':<12}"
    passes = " ".join(f"{v:.3f}" for v in values)
    return f"{statistics.fmean(values):.3f} ({passes})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--winners", action="store_true", help="print the variants to adopt")
    args = parser.parse_args(argv)
    sides = load(args.out_dir)
    if "base" not in sides:
        print(f"no base results under {args.out_dir}")
        return 1
    variants = sorted(set(sides) - {"base"})
    if args.winners:
        print(",".join(v for v in variants if wins(ratios(sides, v))))
        return 0
    for variant in variants:
        print(f"{variant} over base (each normalised to its run's cuDNN dense; < 1 is faster)")
        print(f"  {'row':<29} graph mean (passes)     eager mean (passes)")
        for key, found in sorted(ratios(sides, variant).items()):
            head_dim, seq_len, mask = key
            row = f"D{head_dim} S{seq_len:>6} {mask}"
            print(f"  {row:<29} {_column(found.graph):<23} {_column(found.eager)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
