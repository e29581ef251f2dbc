"""The kernel's two schedules side by side: the plain one and the one that carries each tile's
last P V into the next tile (`carry_last_product`), on bench.kernel's rows, timed from CUDA
graphs under a sustained load beside cuDNN dense (bench.kernel.time_sustained_graphs_ms), so
that `ops.MIN_KV_BLOCKS_TO_CARRY` can be chosen from one run.

    python -m bench.kernel_schedules --seq-lens 16384,32768 --head-dim 128 \\
        --masks random-1.0,random-0.25,causal --out bench/results/schedules.json
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

from bench.kernel import (
    MASK_NAMES,
    add_kernel_arguments,
    cudnn_attention,
    format_ms,
    inputs_for,
    load_kernel,
    masks_for,
    time_sustained_graphs_ms,
    write_result,
)
from sas_runtime.kernels import ops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", default="16384,32768")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--masks", default=",".join(MASK_NAMES))
    add_kernel_arguments(parser)
    args = parser.parse_args(argv)
    if not load_kernel(args.library):
        return 1
    rows: list[dict[str, Any]] = []
    for seq_len in (int(s) for s in args.seq_lens.split(",")):
        q, k, v = inputs_for(seq_len, args.head_dim, args.heads)
        for name, mask in masks_for(args.heads, seq_len, args.masks.split(",")).items():
            call = partial(ops.block_sparse_attention, q, k, v, block_mask=mask)
            times = time_sustained_graphs_ms(
                {
                    "plain": partial(call, carry_last_product=False),
                    "carried": partial(call, carry_last_product=True),
                    "cudnn_dense": partial(cudnn_attention, q, k, v, causal=False),
                }
            )
            plain, carried = times["plain"], times["carried"]
            ratio = None if plain is None or carried is None else carried / plain
            rows.append(
                {
                    "seq_len": seq_len,
                    "head_dim": args.head_dim,
                    "heads": args.heads,
                    "mask": name,
                    "plain_graph_ms": plain,
                    "carried_graph_ms": carried,
                    "cudnn_dense_graph_ms": times["cudnn_dense"],
                    "carried_over_plain": ratio,
                }
            )
            print(
                f"S={seq_len:6d} D={args.head_dim:3d} {name:14s} plain {format_ms(plain)} carried "
                f"{format_ms(carried)} cuDNN dense {format_ms(times['cudnn_dense'])} | carried/plain "
                f"{'-' if ratio is None else f'{ratio:.3f}'}",
                flush=True,
            )
    write_result(args.out, rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
