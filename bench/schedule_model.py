"""A list-scheduling model of the kernel's persistent grid: what a tile order costs, on the CPU.

The kernel runs one CTA per SM; each CTA takes the next tile in schedule order when it is
free, and a tile costs `tile_us + block_us * blocks` (blocks: the key blocks its query block
visits, from the real block mask). The model's makespan against the ideal (total work / SMs)
shows how much a schedule loses to a tail of long tiles, before any GPU time is spent on a
new order. It knows nothing of L2: an order that scatters heads looks free here and is not
(see the tile_scheduler.h comment). Defaults: 132 SMs; 1.7 us per block pair at D128
(4 * 128^3 flops at 660 TFLOPS / 132 SMs); 2 us per tile, a guess.

    python -m bench.schedule_model [--masks global-window,causal] [--seq-lens 4096,16384]
"""

from __future__ import annotations

import argparse
import heapq
import math
from collections.abc import Callable, Sequence

import torch

from bench.kernel import BLOCK, MASK_NAMES, masks_for
from sas_runtime.block_mask import BlockMask

Tile = tuple[int, int]  # (head, query block)


def descending(blocks: torch.Tensor, global_m_blocks: int) -> list[Tile]:
    """The kernel's order: one head at a time, query blocks from the last down."""
    heads, m_blocks = blocks.shape
    return [(h, m) for h in range(heads) for m in range(m_blocks - 1, -1, -1)]


def global_rows_first(blocks: torch.Tensor, global_m_blocks: int) -> list[Tile]:
    """Every head's query blocks with global rows first, then the rest as `descending`."""
    heads, m_blocks = blocks.shape
    first = [(h, m) for h in range(heads) for m in range(global_m_blocks)]
    rest = [(h, m) for h in range(heads) for m in range(m_blocks - 1, global_m_blocks - 1, -1)]
    return first + rest


def longest_first(blocks: torch.Tensor, global_m_blocks: int) -> list[Tile]:
    """Longest processing time first over every tile (ties in `descending` order)."""
    order = descending(blocks, global_m_blocks)
    return sorted(order, key=lambda tile: -int(blocks[tile]))


def length_classes_first(blocks: torch.Tensor, global_m_blocks: int) -> list[Tile]:
    """Classes of visited blocks (1, 2-3, 4-7, ...), the longest first, each in `descending`
    order: most of longest-first's gain with few heads in flight at once."""
    order = descending(blocks, global_m_blocks)
    return sorted(order, key=lambda tile: -int(blocks[tile]).bit_length())


def heads_in_flight(tiles: Sequence[Tile], workers: int) -> float:
    """Mean distinct heads per `workers` consecutive tiles: a proxy for the K/V that must share
    L2 at once (the model prices none of it)."""
    windows = [tiles[i : i + workers] for i in range(0, len(tiles), workers)]
    return sum(len({h for h, _ in window}) for window in windows) / max(len(windows), 1)


ORDERS: dict[str, Callable[[torch.Tensor, int], list[Tile]]] = {
    "descending": descending,
    "global-rows-first": global_rows_first,
    "length-classes-first": length_classes_first,
    "longest-first": longest_first,
}


def makespan(costs: Sequence[float], workers: int) -> float:
    """When the last of `costs`, taken in order by the first free of `workers`, ends."""
    free_at = [0.0] * workers
    for cost in costs:
        heapq.heappush(free_at, heapq.heappop(free_at) + cost)
    return max(free_at)


def visited_blocks(mask: BlockMask, heads: int) -> torch.Tensor:
    """[heads, query blocks] key blocks each tile visits (batch 1)."""
    counts = mask.kv_num_blocks + mask.full_kv_num_blocks
    return counts[0].expand(heads, -1).cpu()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", default="4096,16384,32768")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--masks", default=",".join(MASK_NAMES))
    parser.add_argument("--sms", type=int, default=132)
    parser.add_argument("--tile-us", type=float, default=2.0)
    parser.add_argument("--block-us", type=float, default=1.7)
    args = parser.parse_args(argv)
    names = args.masks.split(",")
    print("makespan in us (x ideal, mean heads per wave of tiles)")
    print("mask            S       ideal us  " + "  ".join(f"{o:>31}" for o in ORDERS))
    for seq_len in map(int, args.seq_lens.split(",")):
        for name, mask in masks_for(args.heads, seq_len, names, device="cpu").items():
            blocks = visited_blocks(mask, args.heads)
            global_m_blocks = math.ceil(mask.element_mask.global_tokens / BLOCK)
            if mask.element_mask.window is None or mask.element_mask.causal:
                global_m_blocks = 0
            cost = blocks.double() * args.block_us + args.tile_us
            ideal = float(cost.sum()) / args.sms
            cells = []
            for order in ORDERS.values():
                tiles = order(blocks, global_m_blocks)
                span = makespan([float(cost[tile]) for tile in tiles], args.sms)
                spread = heads_in_flight(tiles, args.sms)
                cells.append(f"{span:10.1f} ({span / ideal:5.3f} x, {spread:4.1f} heads)")
            print(f"{name:14s} {seq_len:6d} {ideal:10.1f}  " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
