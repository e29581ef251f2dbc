"""How often a tile order reads K/V from DRAM, on the CPU: the schedule model's timeline with
an LRU L2.

The kernel's CTAs take tiles in schedule order (bench.schedule_model's list scheduling: each
tile costs `tile_us + block_us * blocks`) and read each tile's key blocks one per `block_us`.
Every K/V block read, in time order over all CTAs, goes through an LRU cache of `--l2-mb`
holding whole K/V block pairs (a 128-key block of K and of V: 64 KB at D128); a miss is a
read from DRAM. The model prints, per mask and order, the K/V read from DRAM over the least
(each visited block once) and the mean distinct heads per wave.
The H100's L2 is 50 MB in two partitions, but 25 MB is what fits the measurements (`--check`,
S16K D128 ncu): the length classes at random-0.1 and random-0.25 (run 20: 2.35 and 2.06; the
model 2.34 and 2.00), random-1.0 and fixed-random-16 (1.07, 1.03; the model 1.00), and run
21's order, long tiles first and the last 4 waves sorted (1.38 and 1.67; the model 1.38 and
1.66, where 50 MB gives 1.00 and 1.00). ncu's L2 counters (run 22) say why: a read that
misses the SM's near partition is asked of the line's home partition over the fabric, and half
of those asks hit there (S16K random-0.1: 7.6 M of 14.6 M sectors), so the near partition
keeps its own copy of lines homed far, and a block that SMs on both sides read takes a line
in each.

    python -m bench.dram_model [--masks random-0.1,random-0.25] [--seq-lens 4096,16384]
    python -m bench.dram_model --check [--l2-mb 50]
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from bench.kernel_case import case_mask
from bench.schedule_model import (
    ORDERS,
    Tile,
    heads_in_flight,
    kernel_order,
    start_times,
    visited_blocks,
)
from sas_runtime.block_mask import BlockMask

# K/V read from DRAM over the least, S16K D128, by order and mask, as ncu measured them
# (bench/results/kernel-run20-2026-12-07/ncu-bytes/ and kernel-run21-2026-12-07/record-order21/).
MEASURED = {
    ("length-classes-first", "random-1.0"): 1.07,
    ("length-classes-first", "fixed-random-16"): 1.03,
    ("length-classes-first", "random-0.25"): 2.06,
    ("length-classes-first", "random-0.1"): 2.35,
    ("long-then-sorted-last-4-waves", "random-0.25"): 1.67,
    ("long-then-sorted-last-4-waves", "random-0.1"): 1.38,
}


def block_lists(mask: BlockMask, heads: int) -> list[list[list[int]]]:
    """[head][query block] the key blocks the tile reads, in the kernel's order (full blocks
    first, then partial ones), batch 1; a mask without a head dimension serves every head."""
    full_counts = mask.full_kv_num_blocks[0].cpu()
    partial_counts = mask.kv_num_blocks[0].cpu()
    full = mask.full_kv_indices[0].cpu()
    partial = mask.kv_indices[0].cpu()
    lists = []
    for head in range(heads):
        h = head if full_counts.shape[0] > 1 else 0
        lists.append(
            [
                full[h, m, : int(full_counts[h, m])].tolist()
                + partial[h, m, : int(partial_counts[h, m])].tolist()
                for m in range(full_counts.shape[1])
            ]
        )
    return lists


def block_reads(
    order: Sequence[Tile],
    lists: list[list[list[int]]],
    tile_us: float,
    block_us: float,
    sms: int,
) -> list[tuple[float, int, int]]:
    """(time, head, key block) of every K/V block read, in time order: each tile starts when
    the first of `sms` CTAs is free (`schedule_model.start_times`) and reads its blocks one per
    `block_us` after `tile_us`."""
    blocks = [lists[head][m] for head, m in order]
    costs = [tile_us + len(tile_blocks) * block_us for tile_blocks in blocks]
    reads = [
        (start + tile_us + j * block_us, head, block)
        for start, (head, _), tile_blocks in zip(
            start_times(costs, sms), order, blocks, strict=True
        )
        for j, block in enumerate(tile_blocks)
    ]
    return sorted(reads)


def dram_reads(reads: Iterable[tuple[float, int, int]], capacity: int) -> tuple[int, int]:
    """(misses, distinct blocks) of an LRU cache of `capacity` blocks over the reads."""
    cache: OrderedDict[tuple[int, int], None] = OrderedDict()
    seen: set[tuple[int, int]] = set()
    misses = 0
    for _, head, block in reads:
        key = (head, block)
        seen.add(key)
        if key in cache:
            cache.move_to_end(key)
            continue
        misses += 1
        cache[key] = None
        if len(cache) > capacity:
            cache.popitem(last=False)
    return misses, len(seen)


def kv_over_least(
    mask: BlockMask,
    order: Sequence[Tile],
    heads: int,
    *,
    tile_us: float,
    block_us: float,
    sms: int,
    capacity: int,
) -> float:
    """K/V blocks read from DRAM over the distinct blocks visited."""
    reads = block_reads(order, block_lists(mask, heads), tile_us, block_us, sms)
    misses, distinct = dram_reads(reads, capacity)
    return misses / max(distinct, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", default="4096,16384")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--masks", default="random-0.1,random-0.25,random-0.5,random-1.0")
    parser.add_argument("--sms", type=int, default=132)
    parser.add_argument("--tile-us", type=float, default=2.3)
    parser.add_argument("--block-us", type=float, default=1.87)
    parser.add_argument(
        "--l2-mb", type=float, default=25.0, help="the L2 K/V may fill, in MB (see above)"
    )
    parser.add_argument(
        "--check", action="store_true", help="the model against ncu's reads at S16K"
    )
    args = parser.parse_args(argv)
    pair_bytes = 2 * 128 * args.head_dim * 2  # a 128-key block of K and of V, 16-bit
    capacity = int(args.l2_mb * 1e6 // pair_bytes)
    costs = {"tile_us": args.tile_us, "block_us": args.block_us, "sms": args.sms}
    if args.check:
        print(f"S16K, L2 {args.l2_mb:g} MB: K/V from DRAM over the least")
        for (order_name, name), measured in MEASURED.items():
            mask = case_mask(name, args.heads, 16384, device="cpu")
            order = ORDERS[order_name](visited_blocks(mask, args.heads), 0)
            model = kv_over_least(mask, order, args.heads, capacity=capacity, **costs)
            print(f"  {order_name:30s} {name:16s} model {model:5.2f}   measured {measured:5.2f}")
        return 0
    print("K/V read from DRAM over the least (mean heads per wave)")
    print(f"{'mask':16s} {'S':>6s}  " + "  ".join(f"{o:>24s}" for o in ["wrapper", *ORDERS]))
    for seq_len in map(int, args.seq_lens.split(",")):
        for name in args.masks.split(","):
            mask = case_mask(name, args.heads, seq_len, device="cpu")
            blocks = visited_blocks(mask, args.heads)
            orders = {"wrapper": kernel_order(mask, args.heads, args.sms)}
            orders |= {o: ORDERS[o](blocks, 0) for o in ORDERS}
            cells = []
            for order in orders.values():
                ratio = kv_over_least(mask, order, args.heads, capacity=capacity, **costs)
                cells.append(f"{ratio:14.2f} ({heads_in_flight(order, args.sms):5.1f} h)")
            print(f"{name:16s} {seq_len:6d}  " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
