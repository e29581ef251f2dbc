"""A list-scheduling model of the kernel's persistent grid: what a tile order costs, on the CPU.

The kernel runs one CTA per SM; each CTA takes the next tile in schedule order when it is
free, and a tile costs `tile_us + block_us * blocks` (blocks: the key blocks its query block
visits, from the real block mask). The model's makespan against the ideal (total work / SMs)
shows how much a schedule loses to a tail of long tiles, before any GPU time is spent on a
new order. It knows nothing of L2: an order that scatters heads looks free here and is not
(see the tile_scheduler.h comment). Defaults: 132 SMs; 3.8 us per tile and 1.7 us per visited
block at D128, as `--fit` finds them in run 7's record (D64: 2.3 and 1.17).

`--fit RESULT.json` finds those costs in a measurement: for the kernel's own order it finds
the per-tile and per-block costs that best explain a `bench.kernel` result's graph-replay times
(least relative error), and prints each row's measured time against the fitted model's.

    python -m bench.schedule_model [--masks global-window,causal] [--seq-lens 4096,16384]
    python -m bench.schedule_model --fit bench/results/.../NAME.json [--head-dim 64]
    python -m bench.schedule_model --split-last-wave [--combine-us 0.4] [--min-chunk-blocks 4]

`--split-last-wave` prices a split-KV tail on the kernel's order: where the last wave would
leave SMs idle, its tiles go to several CTAs each, and a combine of their partial outputs
follows (`last_wave_split`).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from bench.kernel import BLOCK, MASK_NAMES, masks_for
from sas_runtime.block_mask import BlockMask
from sas_runtime.kernels.ops import LONG_FIRST, orders_tiles, wrapper_tile_order

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


def longest_first_of(tiles: Sequence[Tile], blocks: torch.Tensor) -> list[Tile]:
    """`tiles` longest first, ties in their given order."""
    return sorted(tiles, key=lambda tile: -int(blocks[tile]))


def longest_first(blocks: torch.Tensor, global_m_blocks: int) -> list[Tile]:
    """Longest processing time first over every tile (ties in `descending` order)."""
    return longest_first_of(descending(blocks, global_m_blocks), blocks)


def length_classes_first(blocks: torch.Tensor, global_m_blocks: int) -> list[Tile]:
    """Classes of visited blocks (1, 2-3, 4-7, ...), the longest first, each in `descending`
    order: most of longest-first's gain with few heads in flight at once."""
    order = descending(blocks, global_m_blocks)
    return sorted(order, key=lambda tile: -int(blocks[tile]).bit_length())


def length_classes_per_4_heads(blocks: torch.Tensor, global_m_blocks: int) -> list[Tile]:
    """`length_classes_first` within each group of 4 heads, one group after another
    (`ops.long_tiles_first_order` with `heads_per_group=4`): fewer heads in flight where a
    class spans every head (S4K random masks)."""
    order = descending(blocks, global_m_blocks)
    return sorted(order, key=lambda tile: (tile[0] // 4, -int(blocks[tile]).bit_length()))


SORTED_TAIL_SMS = 132  # the H100's SMs: a wave of the sorted-tail orders


def with_last_waves_sorted(tiles: list[Tile], blocks: torch.Tensor, waves: int) -> list[Tile]:
    """`tiles` with only their last `waves` waves (waves x 132) sorted longest first."""
    start = max(len(tiles) - waves * SORTED_TAIL_SMS, 0)
    return tiles[:start] + longest_first_of(tiles[start:], blocks)


def sorted_last_2_waves(blocks: torch.Tensor, global_m_blocks: int) -> list[Tile]:
    """`descending` with only its last two waves of tiles sorted longest first
    (`ops.long_tiles_first_order` with `sorted_tail`): one head in flight until the end."""
    return with_last_waves_sorted(descending(blocks, global_m_blocks), blocks, 2)


def long_then_sorted_last_waves(
    blocks: torch.Tensor, global_m_blocks: int, waves: int
) -> list[Tile]:
    """Tiles of at least `ops.LONG_FIRST` x the mean block count first, longest first, then the
    rest in `descending` order with their last `waves` waves sorted
    (`ops.long_tiles_first_order` with `sorted_tail` and `long_first`)."""
    long_count = LONG_FIRST * float(blocks.double().mean())
    order = descending(blocks, global_m_blocks)
    long = [tile for tile in order if blocks[tile] >= long_count]
    rest = [tile for tile in order if blocks[tile] < long_count]
    return longest_first_of(long, blocks) + with_last_waves_sorted(rest, blocks, waves)


def long_then_sorted_last_2_waves(blocks: torch.Tensor, global_m_blocks: int) -> list[Tile]:
    """`long_then_sorted_last_waves` over two waves."""
    return long_then_sorted_last_waves(blocks, global_m_blocks, 2)


def long_then_sorted_last_4_waves(blocks: torch.Tensor, global_m_blocks: int) -> list[Tile]:
    """`long_then_sorted_last_waves` over four: the wrapper's order since run 21
    (`ops.wrapper_tile_order`)."""
    return long_then_sorted_last_waves(blocks, global_m_blocks, 4)


def heads_in_flight(tiles: Sequence[Tile], workers: int) -> float:
    """Mean distinct heads per `workers` consecutive tiles: a proxy for the K/V that must share
    L2 at once (the model prices none of it)."""
    windows = [tiles[i : i + workers] for i in range(0, len(tiles), workers)]
    return sum(len({h for h, _ in window}) for window in windows) / max(len(windows), 1)


ORDERS: dict[str, Callable[[torch.Tensor, int], list[Tile]]] = {
    "descending": descending,
    "global-rows-first": global_rows_first,
    "length-classes-first": length_classes_first,
    "length-classes-per-4-heads": length_classes_per_4_heads,
    "longest-first": longest_first,
    "sorted-last-2-waves": sorted_last_2_waves,
    "long-then-sorted-last-2-waves": long_then_sorted_last_2_waves,
    "long-then-sorted-last-4-waves": long_then_sorted_last_4_waves,
}


def kernel_order(mask: BlockMask, heads: int, sms: int) -> list[Tile]:
    """The order the kernel runs for this mask (batch 1): `ops.wrapper_tile_order` where
    `ops.orders_tiles` says the wrapper applies it, else the kernel's own."""
    q_blocks = mask.kv_num_blocks.shape[-1]
    kv_blocks = mask.kv_indices.shape[-1]
    if not orders_tiles(heads * q_blocks, kv_blocks, sms):
        return descending(visited_blocks(mask, heads), 0)
    order = wrapper_tile_order(mask, batch=1, heads=heads, q_blocks=q_blocks, sms=sms)
    # The kernel numbers tiles one head at a time, query blocks from the last down.
    return [(i // q_blocks, q_blocks - 1 - i % q_blocks) for i in order.tolist()]


def start_times(costs: Sequence[float], workers: int) -> list[float]:
    """When each of `costs`, taken in order by the first free of `workers`, starts."""
    free_at = [0.0] * workers
    starts = []
    for cost in costs:
        start = heapq.heappop(free_at)
        starts.append(start)
        heapq.heappush(free_at, start + cost)
    return starts


def makespan(costs: Sequence[float], workers: int) -> float:
    """When the last of `costs`, taken in order by the first free of `workers`, ends."""
    return max(
        (s + c for s, c in zip(start_times(costs, workers), costs, strict=True)), default=0.0
    )


def last_wave_split(counts: Sequence[int], sms: int, min_chunk_blocks: int) -> list[list[int]]:
    """Each tile's key blocks in chunks, where the last wave is split: the last R tiles of the
    order (R = tiles mod SMs, when some SMs would otherwise idle through that wave) each go to
    sms // R CTAs as near-equal key ranges of at least `min_chunk_blocks`, and every other tile
    stays whole."""
    tail = len(counts) % sms
    chunks = [[count] for count in counts]
    if tail == 0 or len(counts) < sms:
        return chunks
    for i in range(len(counts) - tail, len(counts)):
        pieces = max(1, min(sms // tail, counts[i] // min_chunk_blocks))
        chunks[i] = [counts[i] // pieces + (p < counts[i] % pieces) for p in range(pieces)]
    return chunks


def split_costs(
    chunks: Sequence[Sequence[int]], tile_us: float, block_us: float, combine_us: float
) -> list[float]:
    """The work items of `last_wave_split`, in order: each chunk costs a tile's start and its
    blocks; a split tile's last chunk also combines every chunk's partial output (`combine_us`
    per chunk read), which it can do only once the others are written."""
    costs = []
    for pieces in chunks:
        costs += [tile_us + count * block_us for count in pieces]
        if len(pieces) > 1:
            costs[-1] += combine_us * len(pieces)
    return costs


def ideal_us(counts: Sequence[float], tile_us: float, block_us: float, sms: int) -> float:
    """The makespan with the work spread evenly: every tile's start and blocks over the SMs."""
    return (len(counts) * tile_us + sum(counts) * block_us) / sms


def visited_blocks(mask: BlockMask, heads: int) -> torch.Tensor:
    """[heads, query blocks] key blocks each tile visits (batch 1)."""
    counts = mask.kv_num_blocks + mask.full_kv_num_blocks
    return counts[0].expand(heads, -1).cpu()


def span_in_blocks(counts: Sequence[float], sms: int) -> Callable[[float], float]:
    """The makespan of tiles visiting `counts` blocks, in block costs, as a function of the
    tile cost in block costs."""
    return lambda ratio: makespan([count + ratio for count in counts], sms)


def fit_costs(
    spans: Sequence[Callable[[float], float]], measured_us: Sequence[float], ratios: Sequence[float]
) -> tuple[float, float, float]:
    """(tile_us, block_us, RMS relative error) minimising the relative error of
    `block_us * span(tile_us / block_us)` against `measured_us`, over the given ratios; a
    makespan scales with its costs, so the block cost has a closed form for each ratio."""
    best = (math.nan, math.nan, math.inf)
    for ratio in ratios:
        model = [span(ratio) / t for span, t in zip(spans, measured_us, strict=True)]
        block_us = sum(model) / sum(m * m for m in model)
        error = math.sqrt(sum((block_us * m - 1) ** 2 for m in model) / len(model))
        if error < best[2]:
            best = (ratio * block_us, block_us, error)
    return best


def fit(result: Path, head_dim: int, sms: int) -> int:
    rows = [
        row
        for row in json.loads(result.read_text())["rows"]
        if row["head_dim"] == head_dim and row.get("ours_graph_ms") and row["mask"] in MASK_NAMES
    ]
    if not rows:
        raise SystemExit(f"{result}: no D{head_dim} row with a graph-replay time")
    spans: list[Callable[[float], float]] = []
    for row in rows:
        mask = masks_for(row["heads"], row["seq_len"], [row["mask"]], device="cpu")[row["mask"]]
        blocks = visited_blocks(mask, row["heads"])
        tiles = kernel_order(mask, row["heads"], sms)
        spans.append(span_in_blocks([float(blocks[tile]) for tile in tiles], sms))
    measured = [row["ours_graph_ms"] * 1000 for row in rows]
    tile_us, block_us, error = fit_costs(spans, measured, [i / 4 for i in range(41)])
    print(f"{result.name}, D{head_dim}, {sms} SMs, the kernel's order, graph-replay times")
    print(
        f"fitted: {tile_us:.2f} us per tile + {block_us:.3f} us per visited block "
        f"(RMS relative error {error:.1%})"
    )
    print("mask            S       measured us  model us  model/measured")
    for row, span, t in zip(rows, spans, measured, strict=True):
        model = block_us * span(tile_us / block_us)
        print(f"{row['mask']:14s} {row['seq_len']:6d} {t:11.1f} {model:9.1f} {model / t:8.3f}")
    return 0


def print_orders(args: argparse.Namespace) -> int:
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
            ideal = ideal_us(blocks.flatten().tolist(), args.tile_us, args.block_us, args.sms)
            cells = []
            for order in ORDERS.values():
                tiles = order(blocks, global_m_blocks)
                span = makespan([float(cost[tile]) for tile in tiles], args.sms)
                spread = heads_in_flight(tiles, args.sms)
                cells.append(f"{span:10.1f} ({span / ideal:5.3f} x, {spread:4.1f} heads)")
            print(f"{name:14s} {seq_len:6d} {ideal:10.1f}  " + "  ".join(cells))
    return 0


def print_last_wave_split(args: argparse.Namespace) -> int:
    print(
        f"the kernel's order, {args.sms} SMs, {args.tile_us} us per tile + {args.block_us} us "
        f"per block; last wave split into chunks of >= {args.min_chunk_blocks} blocks, "
        f"{args.combine_us} us per chunk combined"
    )
    print("mask            S       ideal us   whole us (x ideal)   split us (x ideal)  split/whole")
    for seq_len in map(int, args.seq_lens.split(",")):
        for name, mask in masks_for(
            args.heads, seq_len, args.masks.split(","), device="cpu"
        ).items():
            blocks = visited_blocks(mask, args.heads)
            counts = [int(blocks[tile]) for tile in kernel_order(mask, args.heads, args.sms)]
            chunks = last_wave_split(counts, args.sms, args.min_chunk_blocks)
            ideal = ideal_us(counts, args.tile_us, args.block_us, args.sms)
            whole = makespan(
                split_costs([[c] for c in counts], args.tile_us, args.block_us, 0), args.sms
            )
            split = makespan(
                split_costs(chunks, args.tile_us, args.block_us, args.combine_us), args.sms
            )
            print(
                f"{name:14s} {seq_len:6d} {ideal:10.1f} {whole:10.1f} ({whole / ideal:5.3f} x) "
                f"{split:10.1f} ({split / ideal:5.3f} x) {split / whole:10.3f}"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", default="4096,16384,32768")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--masks", default=",".join(MASK_NAMES))
    parser.add_argument("--sms", type=int, default=132)
    parser.add_argument("--tile-us", type=float, default=3.8)
    parser.add_argument("--block-us", type=float, default=1.7)
    parser.add_argument("--fit", type=Path, help="a bench.kernel result JSON to fit costs to")
    parser.add_argument("--head-dim", type=int, default=128, help="the rows --fit uses")
    parser.add_argument(
        "--split-last-wave",
        action="store_true",
        help="the kernel's order, whole and with its last wave split (last_wave_split)",
    )
    parser.add_argument("--combine-us", type=float, default=0.4, help="per chunk combined")
    parser.add_argument("--min-chunk-blocks", type=int, default=4)
    args = parser.parse_args(argv)
    if args.fit is not None:
        return fit(args.fit, args.head_dim, args.sms)
    if args.split_last_wave:
        return print_last_wave_split(args)
    return print_orders(args)


if __name__ == "__main__":
    raise SystemExit(main())
