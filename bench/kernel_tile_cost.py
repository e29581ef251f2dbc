"""What a tile costs beyond its blocks, and whether it is the loads: the kernel on masks whose
every tile visits exactly n full blocks, for several n, with three layouts of those blocks:

- `random`: n distinct key blocks drawn per (head, query block), as bench.kernel's random
  masks; the K/V a tile reads is shared with few of the tiles in flight;
- `shared`: the same n random key blocks for every query block of a head, so every K/V block
  is read from DRAM once and then from L2;
- `band`: n consecutive key blocks starting at the query block (wrapping), so neighbouring
  tiles share n - 1 blocks.

Each layout runs under the kernel's plain schedule and, with `--schedules plain,carried`, also
under the one that carries a tile's last P V into the next tile (`carry_last_product`, written
to fill the tile boundary). Per layout and schedule, time = waves * (per-tile + n * per-block),
waves = tiles / SMs, is fitted by least squares. The schedule model (bench.schedule_model)
fits 4.27 us per tile at D128 on bench.kernel's masks; if `shared` and `band` fit a much
smaller per-tile cost than `random`, that cost is the loads at a tile's start, not the tile
boundary itself. Timed from CUDA graphs under a sustained load
(bench.kernel.time_sustained_graphs_ms), base and any `--variant` libraries (built with their
own op namespace, as for bench.kernel_variants) in one process.

    python -m bench.kernel_tile_cost --seq-len 16384 --head-dim 128 --blocks 4,8,16,32 \\
        --schedules plain,carried [--variant TREE/build/sas_kernels_sas_v1.so] \\
        --out bench/results/tile-cost.json
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bench.kernel import (
    add_kernel_arguments,
    format_ms,
    format_number,
    full_blocks_mask,
    inputs_for,
    time_sustained_graphs_ms,
    write_result,
)
from bench.kernel_variants import load_base_and_variants
from sas_runtime.block_mask import BlockMask
from sas_runtime.kernels import ops

LAYOUTS = ("random", "shared", "band")
SCHEDULES = {"plain": False, "carried": True}


def fixed_count_grid(
    layout: str, heads: int, q_blocks: int, kv_blocks: int, count: int, seed: int, device: str
) -> torch.Tensor:
    """A [1, heads, q_blocks, kv_blocks] bool grid with exactly `count` blocks in every row,
    laid out as `layout` (the module's docstring)."""
    if not 0 < count <= kv_blocks:
        raise ValueError(f"count {count} is not in 1..{kv_blocks}")
    generator = torch.Generator(device=device).manual_seed(seed)
    if layout == "band":
        starts = torch.arange(q_blocks, device=device).view(q_blocks, 1)
        columns = (starts + torch.arange(count, device=device)) % kv_blocks
        columns = columns.expand(heads, q_blocks, count)
    elif layout == "shared":
        draws = torch.rand(heads, 1, kv_blocks, device=device, generator=generator)
        columns = draws.argsort(dim=-1)[..., :count].expand(heads, q_blocks, count)
    elif layout == "random":
        draws = torch.rand(heads, q_blocks, kv_blocks, device=device, generator=generator)
        columns = draws.argsort(dim=-1)[..., :count]
    else:
        raise ValueError(f"unknown layout {layout}")
    grid = torch.zeros(heads, q_blocks, kv_blocks, dtype=torch.bool, device=device)
    grid.scatter_(-1, columns.contiguous(), True)
    return grid.unsqueeze(0)


def fixed_count_mask(
    layout: str, heads: int, seq_len: int, count: int, seed: int, device: str = "cuda"
) -> BlockMask:
    blocks = -(-seq_len // ops.BLOCK_SIZE)
    return full_blocks_mask(
        fixed_count_grid(layout, heads, blocks, blocks, count, seed, device), seq_len
    )


def fit_tile_and_block_us(
    counts: list[int], times_ms: list[float], waves: float
) -> tuple[float, float]:
    """Least-squares (per-tile us, per-block us) of time = waves * (tile + count * block)."""
    if len(set(counts)) < 2:
        raise ValueError("the fit needs at least two different block counts")
    per_wave_us = [t * 1000.0 / waves for t in times_ms]
    n = len(counts)
    mean_x = sum(counts) / n
    mean_y = sum(per_wave_us) / n
    sxx = sum((x - mean_x) ** 2 for x in counts)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(counts, per_wave_us, strict=True))
    block = sxy / sxx
    return mean_y - block * mean_x, block


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=16384)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--blocks", default="4,8,16,32", help="blocks per tile, comma-separated")
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--schedules", default="plain", help="plain, carried or both")
    parser.add_argument(
        "--variant",
        type=Path,
        action="append",
        default=[],
        help="a variant library (bench.kernel_variants), timed beside base",
    )
    add_kernel_arguments(parser)
    args = parser.parse_args(argv)
    schedules = args.schedules.split(",")
    unknown = set(schedules) - set(SCHEDULES)
    if unknown:
        parser.error(f"unknown schedules {sorted(unknown)}; known: {list(SCHEDULES)}")
    variants = load_base_and_variants(parser, args.library, args.variant)
    if variants is None:
        return 1
    kernels = {"base": "sas", **{namespace: namespace for namespace in variants}}
    counts = [int(c) for c in args.blocks.split(",")]
    layouts = args.layouts.split(",")
    q, k, v = inputs_for(args.seq_len, args.head_dim, args.heads)
    tiles = args.heads * -(-args.seq_len // ops.BLOCK_SIZE)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    waves = tiles / sms
    sides: dict[str, Callable[[], object]] = {}
    for layout in layouts:
        for count in counts:
            mask = fixed_count_mask(layout, args.heads, args.seq_len, count, seed=args.seq_len)
            for schedule in schedules:
                arguments = ops.op_arguments(
                    q, k, v, block_mask=mask, carry_last_product=SCHEDULES[schedule]
                )
                for kernel, namespace in kernels.items():
                    op = getattr(torch.ops, namespace).block_sparse_attention_fwd
                    sides[f"{kernel}/{layout}-{count}-{schedule}"] = partial(op, *arguments)
    times = time_sustained_graphs_ms(sides)
    rows: list[dict[str, Any]] = []
    fits: dict[str, dict[str, float]] = {}
    for kernel in kernels:
        for layout in layouts:
            for schedule in schedules:
                name = f"{kernel}/{layout}-{schedule}"
                measured = [(c, times[f"{kernel}/{layout}-{c}-{schedule}"]) for c in counts]
                for count, ms in measured:
                    rows.append(
                        {
                            "kernel": kernel,
                            "layout": layout,
                            "schedule": schedule,
                            "blocks_per_tile": count,
                            "graph_ms": ms,
                        }
                    )
                    print(f"{name:24s} {count:3d} blocks a tile {format_ms(ms)}", flush=True)
                usable = [(c, t) for c, t in measured if t is not None]
                if len({c for c, _ in usable}) >= 2:
                    tile_us, block_us = fit_tile_and_block_us(
                        [c for c, _ in usable], [t for _, t in usable], waves
                    )
                    fits[name] = {"tile_us": tile_us, "block_us": block_us}
                    print(
                        f"{name:24s} fit: {format_number(tile_us, '.2f')} us per tile + "
                        f"{format_number(block_us, '.3f')} us per block ({waves:.1f} waves)",
                        flush=True,
                    )
    write_result(
        args.out,
        seq_len=args.seq_len,
        head_dim=args.head_dim,
        heads=args.heads,
        multiprocessors=sms,
        variants={namespace: str(path) for namespace, path in variants.items()},
        rows=rows,
        fits=fits,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
