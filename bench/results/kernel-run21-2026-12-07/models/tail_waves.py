"""Makespan over ideal and K/V read from DRAM over the least (25 MB of L2), per row, for the
length classes, the kernel's own order and long tiles first with the last 2, 3 or 4 waves
sorted; v40b's fit (2.3 us a tile, 1.87 us a block), 32 heads, D128, 132 SMs.

    PYTHONPATH=. python bench/results/kernel-run21-2026-12-07/models/tail_waves.py
"""

from __future__ import annotations

from bench import dram_model
from bench.kernel_case import case_mask
from bench.schedule_model import (
    descending,
    length_classes_first,
    long_then_sorted_last_waves,
    makespan,
    visited_blocks,
)

HEADS, SMS, TILE_US, BLOCK_US = 32, 132, 2.3, 1.87
CAPACITY = int(25e6 // (2 * 128 * 128 * 2))  # K/V block pairs in 25 MB
MASKS = ["random-0.05", "random-0.1", "random-0.25", "random-0.5", "window-1024"]
MASKS += ["global-window", "causal"]


def main() -> None:
    names = ["classes", "kernel", "long+2w", "long+3w", "long+4w"]
    print(f"{'mask':14s} {'S':>6s}  " + "  ".join(f"{name:>14s}" for name in names))
    for seq_len in (4096, 16384):
        for mask_name in MASKS:
            mask = case_mask(mask_name, HEADS, seq_len, device="cpu")
            blocks = visited_blocks(mask, HEADS)
            orders = [length_classes_first(blocks, 0), descending(blocks, 0)]
            orders += [long_then_sorted_last_waves(blocks, 0, waves) for waves in (2, 3, 4)]
            costs = {tile: TILE_US + BLOCK_US * int(blocks[tile]) for tile in orders[1]}
            ideal = sum(costs.values()) / SMS
            cells = []
            for order in orders:
                span = makespan([costs[tile] for tile in order], SMS) / ideal
                reads = dram_model.kv_over_least(
                    mask,
                    order,
                    HEADS,
                    tile_us=TILE_US,
                    block_us=BLOCK_US,
                    sms=SMS,
                    capacity=CAPACITY,
                )
                cells.append(f"{span:5.3f} / {reads:4.2f}")
            print(f"{mask_name:14s} {seq_len:6d}  " + "  ".join(f"{c:>14s}" for c in cells))


if __name__ == "__main__":
    main()
