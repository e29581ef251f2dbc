"""Tile orders side by side, one library: length classes over every head
(`ops.long_tiles_first_order`, the wrapper's order in runs 7-20), the kernel's own (no order:
one head at a time, query blocks from the last down), length classes within groups of heads
(`heads_per_group`) and, with --tail-waves, the kernel's own order with its last waves sorted
(`sorted_tail`, and after the longest tiles: `long_first`, the wrapper's order since run 21),
with the classes a second time as a control (run 12's single pass could not tell 2% from
noise), on bench.kernel's rows, timed from CUDA graphs under a sustained load beside cuDNN
dense, every side in every place of the order once (bench.kernel.time_sustained_graphs_ms).
Run 11's ncu of S4K D128 random-0.1 found L2 hits at 40% and the consumers waiting for Q and
K: the classes put 15 heads' K/V in flight per wave there, the kernel's own order 5.

    python -m bench.kernel_orders --seq-lens 4096,16384 --head-dim 128 --groups "" \\
        --tail-waves 4 --long-first 2,3 --masks random-0.1,random-0.25,global-window \\
        --out bench/results/orders.json
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

import torch

from bench.kernel import (
    MASK_NAMES,
    add_kernel_arguments,
    cudnn_attention,
    format_ms,
    format_number,
    load_kernel,
    problems,
    time_ratio,
    time_sustained_graphs_ms,
    write_result,
)
from sas_runtime.block_mask import BlockMask
from sas_runtime.kernels import ops

# Where `tile_order` sits among the op's arguments (its schema in block_sparse_attention.cpp).
TILE_ORDER_ARGUMENT = 13


def orders_for(
    mask: BlockMask,
    q: torch.Tensor,
    groups: list[int],
    tail_waves: tuple[int, ...] = (),
    long_first: tuple[float, ...] = (ops.LONG_FIRST,),
    sms: int = 0,
) -> dict[str, torch.Tensor | None]:
    """The orders compared on one row, by name; the length classes (the wrapper's order in runs
    7-20) first, then the same again. `long-Fx-then-sorted-last-W-waves` with F = 2 and W = 4
    is the wrapper's order since run 21 (`ops.wrapper_tile_order`); run 20's and 21's results
    name F = 2 `long-then-sorted-last-W-waves`. A wave is `sms` tiles."""
    batch, heads, q_len, _ = q.shape
    q_blocks = -(-q_len // ops.BLOCK_SIZE)
    shape = {"batch": batch, "heads": heads, "q_blocks": q_blocks}
    classes = ops.long_tiles_first_order(mask, **shape)
    orders: dict[str, torch.Tensor | None] = {
        "classes": classes,
        # the wrapper's order again, a control: how far two sides of one order read apart
        "classes-again": classes.clone(),
        "kernel": None,
    }
    for group in groups:
        orders[f"classes-per-{group}-heads"] = ops.long_tiles_first_order(
            mask, **shape, heads_per_group=group
        )
    for waves in tail_waves:
        orders[f"sorted-last-{waves}-waves"] = ops.long_tiles_first_order(
            mask, **shape, sorted_tail=waves * sms
        )
        for factor in long_first:
            orders[f"long-{factor:g}x-then-sorted-last-{waves}-waves"] = ops.long_tiles_first_order(
                mask, **shape, sorted_tail=waves * sms, long_first=factor
            )
    return orders


def with_tile_order(
    arguments: tuple[object, ...], order: torch.Tensor | None
) -> tuple[object, ...]:
    """The op's arguments with another tile order."""
    return (*arguments[:TILE_ORDER_ARGUMENT], order, *arguments[TILE_ORDER_ARGUMENT + 1 :])


def _kernel_op() -> Any:
    """The op every order calls (the loaded library's)."""
    return torch.ops.sas.block_sparse_attention_fwd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", default="4096,16384")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--groups", default="4,8", help="heads per group, comma-separated")
    parser.add_argument(
        "--tail-waves",
        default="",
        help="also the kernel's own order with its last N waves of tiles sorted (and with the"
        " longest tiles first), comma-separated",
    )
    parser.add_argument(
        "--long-first",
        default=f"{ops.LONG_FIRST:g}",
        help="with --tail-waves: tiles of at least this many times the mean block count go"
        " first, comma-separated factors (one side each)",
    )
    parser.add_argument("--masks", default=",".join(MASK_NAMES))
    add_kernel_arguments(parser)
    args = parser.parse_args(argv)
    groups = [int(g) for g in args.groups.split(",") if g]
    tail_waves = tuple(int(w) for w in args.tail_waves.split(",") if w)
    long_first = tuple(float(f) for f in args.long_first.split(",") if f)
    if not load_kernel(args.library):
        return 1
    op = _kernel_op()
    sms = torch.cuda.get_device_properties(0).multi_processor_count if tail_waves else 0
    rows: list[dict[str, Any]] = []
    for problem in problems(args.seq_lens, str(args.head_dim), args.heads, args.masks):
        q, k, v = problem.q, problem.k, problem.v
        arguments = ops.op_arguments(q, k, v, block_mask=problem.mask)
        sides: dict[str, Any] = {
            order_name: partial(op, *with_tile_order(arguments, order))
            for order_name, order in orders_for(
                problem.mask, q, groups, tail_waves, long_first, sms
            ).items()
        }
        sides["cudnn_dense"] = partial(cudnn_attention, q, k, v, causal=False)
        times = time_sustained_graphs_ms(sides, passes=len(sides), rotate=True)
        base = times["classes"]
        over_classes = {
            order_name: time_ratio(time, base)
            for order_name, time in times.items()
            if order_name != "cudnn_dense"
        }
        rows.append(
            {
                **problem.row(),
                "graph_ms": times,
                "over_classes": over_classes,
            }
        )
        ratios = " | ".join(
            f"{order_name} {format_number(ratio, '.3f')}"
            for order_name, ratio in over_classes.items()
            if order_name != "classes"
        )
        print(
            f"{problem.label()} classes {format_ms(base)} | {ratios}",
            flush=True,
        )
        write_result(args.out, rows=rows)  # after every row: a call cut short keeps its rows
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
