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
    format_number,
    load_kernel,
    problems,
    time_ratio,
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
    for problem in problems(args.seq_lens, str(args.head_dim), args.heads, args.masks):
        q, k, v = problem.q, problem.k, problem.v
        call = partial(ops.block_sparse_attention, q, k, v, block_mask=problem.mask)
        times = time_sustained_graphs_ms(
            {
                "plain": partial(call, carry_last_product=False),
                "carried": partial(call, carry_last_product=True),
                "cudnn_dense": partial(cudnn_attention, q, k, v, causal=False),
            }
        )
        plain, carried = times["plain"], times["carried"]
        ratio = time_ratio(carried, plain)
        rows.append(
            {
                **problem.row(),
                "plain_graph_ms": plain,
                "carried_graph_ms": carried,
                "cudnn_dense_graph_ms": times["cudnn_dense"],
                "carried_over_plain": ratio,
            }
        )
        print(
            f"{problem.label()} plain "
            f"{format_ms(plain)} carried {format_ms(carried)} cuDNN dense "
            f"{format_ms(times['cudnn_dense'])} | carried/plain {format_number(ratio, '.3f')}",
            flush=True,
        )
        write_result(args.out, rows=rows)  # after every row: a call cut short keeps its rows
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
