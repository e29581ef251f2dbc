"""One benchmark problem of bench.kernel, launched a few times, for a profiler to pick a launch.

    ncu --clock-control none --set full -k regex:block_sparse_fwd -s 2 -c 1 \\
        python3 -m bench.kernel_case --mask random-0.25 --seq-len 16384 --head-dim 128

The inputs and mask are bench.kernel's for that row (same seeds), so the profile is of a row
the result JSON times. Prints the kernel's time per launch (from CUDA events, profiler
overhead included when one is attached).
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from bench.kernel import inputs_for, load_kernel, masks_for, queued_ms
from sas_runtime.kernels import ops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mask", default="random-0.25")
    parser.add_argument("--seq-len", type=int, default=16384)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--launches", type=int, default=4)
    parser.add_argument("--library", type=Path, default=None, help="compiled extension")
    args = parser.parse_args(argv)

    if not load_kernel(args.library):
        return 1
    q, k, v = inputs_for(args.seq_len, args.head_dim, args.heads)
    mask = masks_for(args.heads, args.seq_len, [args.mask])[args.mask]
    per_launch = queued_ms(
        partial(ops.block_sparse_attention, q, k, v, block_mask=mask), args.launches
    )
    print(f"{args.mask} S={args.seq_len} D={args.head_dim}: {per_launch:.3f} ms per launch")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
