"""Where a tile's time goes, read from the kernel's own timeline of one launch.

A library built with SAS_KERNEL_TRACE=1 under its own op namespace writes the SM's clock at
fixed points of every tile (runtime/kernels/csrc/trace.h): when the producer posts the tile,
issues its Q, its first K and its last V, and when each consumer warpgroup reads the tile,
sees Q and the first K land, has the first block's P ready, has the last P V landed, has the
output normalised and in shared memory, and has issued the output's stores. Per
case this times base and the traced build side by side (what the trace itself costs), soaks
the traced build under CUDA-graph replays (the card at its sustained clock), reads the last
launch's timeline and prints, over the tiles past each CTA's first, the mean and median of:

- `wait for tile`: a warpgroup's stores of the previous tile issued -> its read of this tile
  (the warpgroups' mean);
- `wait for Q`, `wait for K0`: the tile read -> Q landed -> the first K landed;
- `blocks`: the first K landed -> the last P V landed, and per block; of it `first block`:
  the first K landed -> the first block's P ready (the pipeline's fill: S_0 and S_1, their
  softmax and P_0 V_0 when the tile has two blocks or more);
- `epilogue`: the last P V landed -> the output's stores issued; of it `normalise` (-> the
  rows divided by their sums), `to shared` (-> the tile converted and written to shared
  memory, both warpgroup barriers passed) and `store issue` (-> the TMA store and the LSE
  stores issued);
- the producer's `schedule` (its previous tile's last V issued -> this tile posted: the tile
  counter, the tile order and the block counts read; below zero since the kernel's scheduler
  thread posts a tile before the loader has issued the last V of the one before), how long
  the tile was posted before the first warpgroup read it (`posted ahead`: near zero when the
  consumers waited for it), how long before that its Q was issued (`Q issued ahead`; below
  zero: after), and its first K before Q landed (`K0 issued ahead`);

then a least-squares fit of each tile's time (one tile read to the next) over its block count:
the per-tile and per-block costs that bench.kernel_tile_cost fits from whole launches.

    SAS_KERNEL_TRACE=1 python -m sas_runtime.kernels.build --op-namespace sas_trace --out T
    python -m bench.kernel_trace --library BASE/sas_kernels.so \\
        --trace-library T/sas_kernels_sas_trace.so \\
        --case "random-0.1 4096 128" --case "fixed-random-4 4096 128" --out R.json

A case is "MASK SEQ_LEN HEAD_DIM", MASK one of bench.kernel's or bench.kernel_case's
`fixed-LAYOUT-N`.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bench.kernel import (
    add_kernel_arguments,
    format_number,
    inputs_for,
    sized_graph,
    soak,
    time_ratio,
    time_sustained_graphs_ms,
    write_result,
)
from bench.kernel_case import case_mask
from bench.kernel_variants import load_base_and_variants
from sas_runtime.kernels import ops

# csrc/trace.h's layout.
TRACE_TILES = 256
TRACE_EVENTS = 24
PRODUCER_POSTED, PRODUCER_Q_ISSUED, PRODUCER_K0_ISSUED, PRODUCER_LAST_V_ISSUED, BLOCKS = range(5)
CONSUMER, CONSUMER_STRIDE, WARPGROUPS = 5, 8, 2
TAKEN, Q_READY, K0_READY, LOOP_DONE, STORED, FIRST_BLOCK_DONE, NORMALISED, OUTPUT_IN_SHARED = range(
    8
)
START_CLOCK, START_NS, END_CLOCK, END_NS, SM = range(5)

CONSUMER_INTERVALS = (
    "wait for tile",
    "wait for Q",
    "wait for K0",
    "blocks",
    "first block",
    "epilogue",
    "normalise",
    "to shared",
    "store issue",
)
PRODUCER_INTERVALS = ("schedule", "posted ahead", "Q issued ahead", "K0 issued ahead")


@dataclass(frozen=True)
class Case:
    mask: str
    seq_len: int
    head_dim: int

    @classmethod
    def parse(cls, text: str) -> Case:
        parts = text.split()
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            raise ValueError(f"{text!r}: expected 'MASK SEQ_LEN HEAD_DIM'")
        return cls(parts[0], int(parts[1]), int(parts[2]))

    def label(self) -> str:
        return f"{self.mask} S{self.seq_len} D{self.head_dim}"


def _slot(warpgroup: int, event: int) -> int:
    """Where a consumer warpgroup's event sits in a trace row."""
    return CONSUMER + CONSUMER_STRIDE * warpgroup + event


def _consumer(row: Sequence[int], event: int) -> list[int]:
    """The event's clock in each warpgroup that reached it."""
    slots = (row[_slot(wg, event)] for wg in range(WARPGROUPS))
    return [clock for clock in slots if clock > 0]


def _mean_interval(
    row: Sequence[int], start: int, end: int, start_row: Sequence[int] | None = None
) -> float | None:
    """The warpgroups' mean of end - start (cycles), the start read from `start_row` (the
    previous tile's) when given; None if neither warpgroup reached both."""
    first = row if start_row is None else start_row
    spans = [
        row[_slot(wg, end)] - first[_slot(wg, start)]
        for wg in range(WARPGROUPS)
        if first[_slot(wg, start)] > 0 and row[_slot(wg, end)] > 0
    ]
    return sum(spans) / len(spans) if spans else None


def tile_records(trace: Sequence[Sequence[Sequence[int]]]) -> list[dict[str, Any]]:
    """One record per traced tile (CTA, its index among the CTA's tiles, block count) with
    every interval of the module's docstring in microseconds, from a [CTAs, TRACE_TILES + 1,
    TRACE_EVENTS] trace; each CTA's clock is converted at its own rate (header clocks over
    global-timer nanoseconds)."""
    records = []
    for cta, rows in enumerate(trace):
        header = rows[TRACE_TILES]
        if header[END_NS] <= header[START_NS] or header[END_CLOCK] <= header[START_CLOCK]:
            continue  # a CTA the grid did not launch
        cycles_per_us = (header[END_CLOCK] - header[START_CLOCK]) / (
            (header[END_NS] - header[START_NS]) / 1000
        )
        taken_rows = [row for row in rows[:TRACE_TILES] if _consumer(row, TAKEN)]
        for index, row in enumerate(taken_rows):
            previous = taken_rows[index - 1] if index > 0 else None
            following = taken_rows[index + 1] if index + 1 < len(taken_rows) else None
            cycles: dict[str, float | None] = {
                "wait for Q": _mean_interval(row, TAKEN, Q_READY),
                "wait for K0": _mean_interval(row, Q_READY, K0_READY),
                "blocks": _mean_interval(row, K0_READY, LOOP_DONE),
                "first block": _mean_interval(row, K0_READY, FIRST_BLOCK_DONE),
                "epilogue": _mean_interval(row, LOOP_DONE, STORED),
                "normalise": _mean_interval(row, LOOP_DONE, NORMALISED),
                "to shared": _mean_interval(row, NORMALISED, OUTPUT_IN_SHARED),
                "store issue": _mean_interval(row, OUTPUT_IN_SHARED, STORED),
                "wait for tile": None,
                "tile": None,
                "schedule": None,
                "posted ahead": None,
                "Q issued ahead": None,
                "K0 issued ahead": None,
            }
            taken = min(_consumer(row, TAKEN))
            if previous is not None:
                cycles["wait for tile"] = _mean_interval(row, STORED, TAKEN, start_row=previous)
            if following is not None:
                cycles["tile"] = min(_consumer(following, TAKEN)) - taken
            if previous is not None and previous[PRODUCER_LAST_V_ISSUED] > 0:
                cycles["schedule"] = row[PRODUCER_POSTED] - previous[PRODUCER_LAST_V_ISSUED]
            if row[PRODUCER_POSTED] > 0:
                cycles["posted ahead"] = taken - row[PRODUCER_POSTED]
            if row[PRODUCER_Q_ISSUED] > 0:
                cycles["Q issued ahead"] = taken - row[PRODUCER_Q_ISSUED]
            q_ready = _consumer(row, Q_READY)
            if row[PRODUCER_K0_ISSUED] > 0 and q_ready:
                cycles["K0 issued ahead"] = min(q_ready) - row[PRODUCER_K0_ISSUED]
            records.append(
                {
                    "cta": cta,
                    "index": index,
                    "block_count": row[BLOCKS],
                    **{
                        name: None if value is None else round(value / cycles_per_us, 4)
                        for name, value in cycles.items()
                    },
                }
            )
    return records


def launch_summary(trace: Sequence[Sequence[Sequence[int]]]) -> dict[str, float]:
    """The launch as a whole: its span, how far apart the CTAs started and ended, and the
    SMs' mean clock, from the header rows."""
    headers = [rows[TRACE_TILES] for rows in trace if rows[TRACE_TILES][END_NS] > 0]
    starts = [h[START_NS] for h in headers]
    ends = [h[END_NS] for h in headers]
    ghz = [
        (h[END_CLOCK] - h[START_CLOCK]) / (h[END_NS] - h[START_NS])
        for h in headers
        if h[END_NS] > h[START_NS]
    ]
    return {
        "ctas": len(headers),
        "span_us": (max(ends) - min(starts)) / 1000,
        "start_spread_us": (max(starts) - min(starts)) / 1000,
        "end_spread_us": (max(ends) - min(ends)) / 1000,
        "clock_ghz": statistics.fmean(ghz),
    }


def interval_summary(
    records: list[dict[str, Any]], *, first_tiles: bool = False
) -> dict[str, dict[str, float]]:
    """Mean and median of each interval over the tiles (with blocks) past each CTA's first,
    or over each CTA's first (`first_tiles`), and of the blocks' time per block."""
    later = [r for r in records if (r["index"] == 0) == first_tiles and r["block_count"] > 0]
    columns: dict[str, list[float]] = {
        name: [r[name] for r in later if r[name] is not None]
        for name in (*CONSUMER_INTERVALS, "tile", *PRODUCER_INTERVALS)
    }
    columns["per block"] = [
        r["blocks"] / r["block_count"] for r in later if r["blocks"] is not None
    ]
    return {
        name: {"mean": statistics.fmean(values), "median": statistics.median(values)}
        for name, values in columns.items()
        if values
    }


def tile_fit(records: list[dict[str, Any]]) -> dict[str, float] | None:
    """Least squares of tile time = per_tile + blocks * per_block over the tiles past each
    CTA's first whose next tile was traced; None with fewer than two block counts."""
    points = [
        (r["block_count"], r["tile"])
        for r in records
        if r["index"] > 0 and r["tile"] is not None and r["block_count"] > 0
    ]
    if len({blocks for blocks, _ in points}) < 2:
        return None
    slope, intercept = statistics.linear_regression(
        [float(b) for b, _ in points], [t for _, t in points]
    )
    return {"per_tile_us": intercept, "per_block_us": slope, "tiles": len(points)}


def soaked_trace(
    traced: Any, last_trace: Any, *, replay_ms: float = 20.0, soak_ms: float = 250.0
) -> list[list[list[int]]] | None:
    """The timeline of the traced op's last launch after `soak_ms` of CUDA-graph replays (the
    card at the clock it holds under load, as bench.kernel times it); None if it cannot be
    captured."""
    sized = sized_graph(traced, replay_ms)  # the library keeps the last captured call's trace
    if sized is None:
        return None
    soak(sized[0], soak_ms)
    torch.cuda.synchronize()
    trace: list[list[list[int]]] = last_trace().cpu().tolist()
    return trace


def trace_case(case: Case, heads: int, trace_namespace: str) -> dict[str, Any]:
    """Times base and the traced build on the case side by side, then reads and summarises
    the traced build's timeline."""
    q, k, v = inputs_for(case.seq_len, case.head_dim, heads)
    mask = case_mask(case.mask, heads, case.seq_len)
    arguments = ops.op_arguments(q, k, v, block_mask=mask)
    traced_ops = getattr(torch.ops, trace_namespace)
    base = partial(torch.ops.sas.block_sparse_attention_fwd, *arguments)
    traced = partial(traced_ops.block_sparse_attention_fwd, *arguments)
    times = time_sustained_graphs_ms({"base": base, "traced": traced}, passes=2, rotate=True)
    result: dict[str, Any] = {
        "mask": case.mask,
        "seq_len": case.seq_len,
        "head_dim": case.head_dim,
        "heads": heads,
        "carry_last_product": ops.carries_last_product(
            case.head_dim, -(-case.seq_len // ops.BLOCK_SIZE)
        ),
        "base_graph_ms": times["base"],
        "traced_graph_ms": times["traced"],
    }
    trace = soaked_trace(traced, traced_ops.last_trace)
    if trace is None:
        return result
    records = tile_records(trace)
    return {
        **result,
        "launch": launch_summary(trace),
        "intervals_us": interval_summary(records),
        "tile_fit": tile_fit(records),
        "first_tiles_us": interval_summary(records, first_tiles=True),
        "tiles": records,
    }


def print_case(case: Case, result: dict[str, Any]) -> None:
    base, traced = result["base_graph_ms"], result["traced_graph_ms"]
    ratio = format_number(time_ratio(traced, base), ".3f")
    print(
        f"{case.label()}: base {format_number(base, '.4f')} ms, traced "
        f"{format_number(traced, '.4f')} ms ({ratio} x base)"
        + (", carried" if result["carry_last_product"] else ""),
        flush=True,
    )
    if "launch" not in result:
        print("  no trace (the traced build could not be captured)")
        return
    launch = result["launch"]
    print(
        f"  {len(result['tiles'])} tiles on {launch['ctas']} CTAs at {launch['clock_ghz']:.2f} "
        f"GHz; span {launch['span_us']:.1f} us, CTAs start over {launch['start_spread_us']:.1f} "
        f"us and end over {launch['end_spread_us']:.1f} us"
    )
    print("  us per tile past each CTA's first: mean / median (each CTA's first tile: mean)")
    first = result["first_tiles_us"]
    for name, value in result["intervals_us"].items():
        first_mean = first.get(name, {}).get("mean")
        print(
            f"    {name:<16} {value['mean']:7.3f} / {value['median']:7.3f}"
            f"   ({format_number(first_mean, '7.3f')})"
        )
    fit = result["tile_fit"]
    if fit is not None:
        print(
            f"  tile = {fit['per_tile_us']:.2f} us + blocks x {fit['per_block_us']:.3f} us "
            f"(least squares over {fit['tiles']} tiles)"
        )


def _now() -> str:
    """UTC now, to the millisecond: a case's span, to match against the card's clock log."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trace-library",
        type=Path,
        required=True,
        help="a SAS_KERNEL_TRACE=1 build under its own op namespace",
    )
    parser.add_argument(
        "--case",
        action="append",
        default=[],
        help="'MASK SEQ_LEN HEAD_DIM' (repeatable; default: 'random-0.1 4096 128')",
    )
    parser.add_argument("--heads", type=int, default=32)
    add_kernel_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cases = [Case.parse(text) for text in args.case or ["random-0.1 4096 128"]]
    except ValueError as error:
        parser.error(str(error))
    namespaces = load_base_and_variants(parser, args.library, [args.trace_library])
    if namespaces is None:
        return 1
    (namespace,) = namespaces
    if not hasattr(getattr(torch.ops, namespace), "last_trace"):
        parser.error(f"{args.trace_library} has no last_trace: build it with SAS_KERNEL_TRACE=1")
    results = []
    for case in cases:
        started = _now()
        result = {"started": started, **trace_case(case, args.heads, namespace), "ended": _now()}
        print_case(case, result)
        results.append(result)
        write_result(args.out, trace_library=str(args.trace_library), cases=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
