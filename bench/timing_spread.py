"""How far one benchmark row's times spread, and where the spread comes from.

    python -m bench.timing_spread --seq-len 16384 --head-dim 128 --mask random-1.0 \\
        --out bench/results/spread.json

For one row of bench.kernel (same inputs and mask), in alternating rounds, it times our kernel,
FlexAttention (compiled, same block mask) and cuDNN dense three ways: single calls each between
its own pair of events with a sync after each (bench.kernel's eager figure), `--samples` calls
queued back to back between one pair of events (the host's gaps hidden as long as it keeps
ahead), and CUDA-graph replays. If the single-call figure alone moves, the host's launch path is
in it; if all three move together, the GPU itself ran slower (clocks, power). Each round starts
with a different side, so no side always follows another. Prints each round and a summary of
medians and FlexAttention-over-ours ratios for each way of timing.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch.nn.attention import flex_attention

from bench.kernel import (
    add_kernel_arguments,
    cudnn_attention,
    format_number,
    inputs_for,
    load_kernel,
    masks_for,
    queued_ms,
    single_call_ms,
    time_graph_ms,
    time_ratio,
    write_result,
)
from sas_runtime.kernels import ops

SIDES = ("ours", "flex", "cudnn")
WAYS = ("single", "queued", "graph")


def sides_for(
    seq_len: int, head_dim: int, heads: int, mask_name: str
) -> dict[str, Callable[[], object]]:
    q, k, v = inputs_for(seq_len, head_dim, heads)
    mask = masks_for(heads, seq_len, [mask_name])[mask_name]
    flex = torch.compile(flex_attention.flex_attention, dynamic=False)
    return {
        "ours": partial(ops.block_sparse_attention, q, k, v, block_mask=mask),
        "flex": partial(flex, q, k, v, block_mask=mask.to_flex_attention()),
        "cudnn": partial(cudnn_attention, q, k, v, causal=mask_name == "causal"),
    }


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    medians = {
        side: {
            "single": statistics.median(t for r in rounds for t in r[side]["single"]),
            "queued": statistics.median(r[side]["queued"] for r in rounds),
            "graph": statistics.median(
                r[side]["graph"] for r in rounds if r[side]["graph"] is not None
            )
            if any(r[side]["graph"] is not None for r in rounds)
            else None,
        }
        for side in SIDES
    }
    flex_over_ours = {way: time_ratio(medians["flex"][way], medians["ours"][way]) for way in WAYS}
    return {"medians_ms": medians, "flex_over_ours": flex_over_ours}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=16384)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--mask", default="random-1.0")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--samples", type=int, default=20)
    add_kernel_arguments(parser)
    args = parser.parse_args(argv)
    if not load_kernel(args.library):
        return 1
    sides = sides_for(args.seq_len, args.head_dim, args.heads, args.mask)
    for fn in sides.values():  # compile and warm every side before the first round
        for _ in range(3):
            fn()
    torch.cuda.synchronize()

    rounds: list[dict[str, Any]] = []
    for round_index in range(args.rounds):
        order = SIDES[round_index % 3 :] + SIDES[: round_index % 3]
        measured: dict[str, Any] = {}
        for side in order:
            fn = sides[side]
            began = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
            single = single_call_ms(fn, args.samples)
            measured[side] = {
                "began": began,
                "single": single,
                "queued": queued_ms(fn, args.samples),
                "graph": time_graph_ms(fn),
            }
            graph = measured[side]["graph"]
            print(
                f"round {round_index} {began} {side:5s} single median "
                f"{statistics.median(single):8.3f} (min {min(single):8.3f} max {max(single):8.3f})"
                f" | queued {measured[side]['queued']:8.3f} | graph "
                f"{format_number(graph, '8.3f')} ms",
                flush=True,
            )
        rounds.append(measured)

    summary = summarise(rounds)
    for side in SIDES:
        medians = summary["medians_ms"][side]
        print(f"{side:5s} " + " | ".join(f"{way} {medians[way]}" for way in WAYS))
    print("flex / ours: " + " | ".join(f"{w} {summary['flex_over_ours'][w]}" for w in WAYS))
    write_result(
        args.out,
        row={
            "seq_len": args.seq_len,
            "head_dim": args.head_dim,
            "heads": args.heads,
            "mask": args.mask,
        },
        rounds=rounds,
        **summary,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
