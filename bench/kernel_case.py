"""One benchmark problem of bench.kernel, launched a few times, for a profiler to pick a launch.

    ncu --clock-control none --set full -k regex:block_sparse_fwd -s 2 -c 1 \\
        python3 -m bench.kernel_case --mask random-0.25 --seq-len 16384 --head-dim 128

The inputs and mask are bench.kernel's for that row (same seeds), so the profile is of a row
the result JSON times. A mask named `fixed-LAYOUT-N` is bench.kernel_tile_cost's instead: N
blocks in every tile, laid out as LAYOUT (random, shared or band). Prints the kernel's time
per launch (CUDA events around the queued launches, after one untimed launch; profiler
overhead included when one is attached). `--side cudnn` launches cuDNN's SDPA on the row's
dense problem instead (causal for the causal mask), so that the same profiler metrics can be
read off the peer (`-k regex:sdpa|fmha|flash`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench.kernel import cudnn_attention, inputs_for, load_kernel, masks_for, queued_ms
from bench.kernel_tile_cost import LAYOUTS, fixed_count_mask
from sas_runtime.block_mask import BlockMask
from sas_runtime.kernels import ops


def parse_fixed_mask(name: str) -> tuple[str, int]:
    """`fixed-LAYOUT-N` -> (LAYOUT, N)."""
    parts = name.split("-")
    if len(parts) != 3 or parts[1] not in LAYOUTS or not parts[2].isdigit():
        raise ValueError(f"{name}: expected fixed-LAYOUT-N with LAYOUT one of {list(LAYOUTS)}")
    return parts[1], int(parts[2])


def case_mask(name: str, heads: int, seq_len: int, device: str = "cuda") -> BlockMask:
    """bench.kernel's mask `name` for the row, or a `fixed-LAYOUT-N` one (seeded by the length,
    as bench.kernel_tile_cost does)."""
    if name.startswith("fixed-"):
        layout, count = parse_fixed_mask(name)
        return fixed_count_mask(layout, heads, seq_len, count, seed=seq_len, device=device)
    return masks_for(heads, seq_len, [name], device=device)[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mask", default="random-0.25")
    parser.add_argument("--seq-len", type=int, default=16384)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--launches", type=int, default=4)
    parser.add_argument("--library", type=Path, default=None, help="compiled extension")
    parser.add_argument("--side", choices=("ours", "cudnn"), default="ours")
    args = parser.parse_args(argv)
    if args.mask.startswith("fixed-"):
        try:
            parse_fixed_mask(args.mask)
        except ValueError as error:
            parser.error(str(error))

    q, k, v = inputs_for(args.seq_len, args.head_dim, args.heads)
    launch: Callable[[], object]
    if args.side == "cudnn":
        launch = partial(cudnn_attention, q, k, v, causal=args.mask == "causal")
    else:
        if not load_kernel(args.library):
            return 1
        mask = case_mask(args.mask, args.heads, args.seq_len)
        launch = partial(ops.block_sparse_attention, q, k, v, block_mask=mask)
    launch()  # cuDNN's plan and the wrapper's tile order are made once, before the timing
    per_launch = queued_ms(launch, args.launches)
    print(
        f"{args.side} {args.mask} S={args.seq_len} D={args.head_dim}: "
        f"{per_launch:.3f} ms per launch"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
