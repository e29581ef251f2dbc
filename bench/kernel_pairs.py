"""CTAs alone against CTAs in pairs, one library: the wrapper's call (`ops.op_arguments`) and
the same call with `pair_tiles` (clusters of two CTAs on query blocks 2 i and 2 i + 1, each
loading half of every K/V block into both, as FlashAttention 3 does for non-causal D128), on
rows whose masks allow it (`ops.pairs_share_blocks`): bench.kernel's dense row (random-1.0)
and `paired-random-D` (bench.kernel's random blocks drawn once per pair of query blocks). Timed from CUDA
graphs under a sustained load beside cuDNN dense, every side in every place of the order once
(bench.kernel.time_sustained_graphs_ms); the two sides' outputs must agree bit for bit.
S16K dense runs at the card's power cap (runs 19-21) and asks the L2 for 30.6 GB a call (run
22's ncu): pairs halve that.

    python -m bench.kernel_pairs --seq-lens 4096,16384,32768 \\
        --masks random-1.0,paired-random-0.5 --out bench/results/pairs.json
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from bench.kernel import (
    add_kernel_arguments,
    add_row_arguments,
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

HEAD_DIM = 128
"""Pairs run at D128 only."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_row_arguments(parser, seq_lens="4096,16384,32768", masks="random-1.0,paired-random-0.5")
    add_kernel_arguments(parser)
    args = parser.parse_args(argv)
    if not load_kernel(args.library):
        return 1
    op = torch.ops.sas.block_sparse_attention_fwd
    rows: list[dict[str, Any]] = []
    for problem in problems(args.seq_lens, str(HEAD_DIM), args.heads, args.masks):
        q, k, v, mask = problem.q, problem.k, problem.v, problem.mask
        if not ops.pairs_share_blocks(mask):
            print(f"{problem.label()}: the rows of a pair differ, skipped", flush=True)
            continue
        alone = partial(op, *ops.op_arguments(q, k, v, block_mask=mask))
        paired = partial(op, *ops.op_arguments(q, k, v, block_mask=mask, pair_tiles=True))
        same = all(torch.equal(a, b) for a, b in zip(alone(), paired(), strict=True))
        sides: dict[str, Callable[[], object]] = {
            "alone": alone,
            "pairs": paired,
            "cudnn_dense": partial(cudnn_attention, q, k, v, causal=False),
        }
        times = time_sustained_graphs_ms(sides, passes=len(sides), rotate=True)
        ratio = time_ratio(times["pairs"], times["alone"])
        rows.append(
            {**problem.row(), "graph_ms": times, "pairs_over_alone": ratio, "same_bits": same}
        )
        print(
            f"{problem.label()} alone {format_ms(times['alone'])} "
            f"pairs {format_ms(times['pairs'])} cuDNN {format_ms(times['cudnn_dense'])} | "
            f"pairs/alone {format_number(ratio, '.3f')} | same bits {same}",
            flush=True,
        )
        write_result(args.out, rows=rows)  # after every row: a call cut short keeps its rows
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
