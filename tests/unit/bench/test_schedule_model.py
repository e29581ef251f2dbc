"""The schedule model: makespans of list scheduling, and the tile orders it compares."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.kernel import masks_for
from bench.schedule_model import (
    ORDERS,
    Tile,
    descending,
    fit,
    fit_costs,
    global_rows_first,
    heads_in_flight,
    kernel_order,
    last_wave_split,
    length_classes_first,
    length_classes_per_4_heads,
    long_then_sorted_last_2_waves,
    long_then_sorted_last_4_waves,
    makespan,
    sorted_last_2_waves,
    span_in_blocks,
    split_costs,
    visited_blocks,
)
from sas_runtime.kernels.ops import long_tiles_first_order


def test_makespan_of_list_scheduling() -> None:
    assert makespan([3, 1, 1, 1], workers=2) == 3
    # The long job last starts only when a worker frees up, at 1.
    assert makespan([1, 1, 1, 3], workers=2) == 4
    assert makespan([], workers=4) == 0


@pytest.mark.parametrize("order", ORDERS)
def test_every_order_takes_every_tile_once(order: str) -> None:
    blocks = torch.randint(0, 9, (3, 7))
    tiles = ORDERS[order](blocks, 2)
    assert sorted(tiles) == [(h, m) for h in range(3) for m in range(7)]


def test_global_rows_first_takes_every_heads_global_blocks_before_the_rest() -> None:
    tiles = global_rows_first(torch.ones(2, 4, dtype=torch.int32), 1)
    assert tiles == [(0, 0), (1, 0), (0, 3), (0, 2), (0, 1), (1, 3), (1, 2), (1, 1)]


def test_global_window_tail_is_what_global_rows_first_removes() -> None:
    mask = masks_for(32, 16384, ["global-window"], device="cpu")["global-window"]
    blocks = visited_blocks(mask, 32)
    assert int(blocks[0, 0]) == 128  # global rows see every key block
    cost = (blocks.double() * 1.7 + 2.0).tolist()
    spans = {
        name: makespan([cost[h][m] for h, m in order(blocks, 2)], 132)
        for name, order in ORDERS.items()
    }
    assert spans["global-rows-first"] < 0.9 * spans["descending"]


def test_length_classes_first_keeps_the_kernel_order_within_a_class() -> None:
    blocks = torch.tensor([[1, 5, 4, 8], [8, 2, 6, 7]])
    # Classes: 8 -> 4; 4-7 -> 3; 2-3 -> 2; 1 -> 1. Within a class: head 0 first, m descending.
    assert length_classes_first(blocks, 0) == [
        (0, 3),
        (1, 0),
        (0, 2),
        (0, 1),
        (1, 3),
        (1, 2),
        (1, 1),
        (0, 0),
    ]


def test_heads_in_flight_counts_distinct_heads_per_wave() -> None:
    assert heads_in_flight([(0, 1), (0, 0), (1, 1), (2, 0)], workers=2) == 1.5


def test_kernel_order_is_the_wrappers_only_where_the_kernel_reorders() -> None:
    # The kernel's order comes from ops.wrapper_tile_order; the model's own long-then-sorted
    # order must agree with it tile for tile.
    wide = masks_for(16, 5120, ["random-0.25"], device="cpu")["random-0.25"]  # 640 tiles
    order = kernel_order(wide, heads=16, sms=132)
    blocks = visited_blocks(wide, 16)
    assert order == long_then_sorted_last_4_waves(blocks, 0)
    counts = [int(blocks[tile]) for tile in order]
    assert counts[-528:] == sorted(counts[-528:], reverse=True)  # the last 4 waves only
    assert counts != sorted(counts, reverse=True)
    mask = masks_for(4, 5120, ["random-0.25"], device="cpu")["random-0.25"]  # 40 x 40 blocks
    blocks = visited_blocks(mask, 4)
    assert kernel_order(mask, heads=4, sms=160) == descending(blocks, 0)  # one wave
    short = masks_for(16, 1920, ["causal"], device="cpu")["causal"]  # 15 key blocks
    assert kernel_order(short, heads=16, sms=132) == descending(visited_blocks(short, 16), 0)


def ops_order(mask_name: str, **options: Any) -> tuple[torch.Tensor, list[Tile]]:
    """8 heads at S5120 (320 tiles): the mask's visited blocks, and `ops.long_tiles_first_order`
    with `options` as the model's (head, query block) tiles."""
    mask = masks_for(8, 5120, [mask_name], device="cpu")[mask_name]
    blocks = visited_blocks(mask, 8)
    q_blocks = blocks.shape[1]
    order = long_tiles_first_order(mask, batch=1, heads=8, q_blocks=q_blocks, **options)
    return blocks, [(i // q_blocks, q_blocks - 1 - i % q_blocks) for i in order.tolist()]


def test_the_models_grouped_classes_are_the_ops_grouped_order() -> None:
    blocks, tiles = ops_order("random-0.1", heads_per_group=4)
    assert tiles == length_classes_per_4_heads(blocks, 0)
    assert tiles != length_classes_first(blocks, 0)


def test_the_models_sorted_tail_is_the_ops_sorted_tail_order() -> None:
    """The first 56 tiles in the kernel's order, the last 264 (two waves) longest first."""
    blocks, tiles = ops_order("random-0.1", sorted_tail=264)
    assert tiles == sorted_last_2_waves(blocks, 0)
    assert tiles[:56] == descending(blocks, 0)[:56]
    assert tiles != descending(blocks, 0)


def test_the_models_long_then_sorted_tail_is_the_ops_order() -> None:
    """Global + window: the global rows (every key block) go first."""
    blocks, tiles = ops_order("global-window", sorted_tail=264, long_first=2.0)
    assert tiles == long_then_sorted_last_2_waves(blocks, 0)
    assert {m for _, m in tiles[:16]} == {0, 1}  # 256 global tokens: two query blocks a head


def test_fit_costs_recovers_the_costs_that_made_the_times() -> None:
    shapes = [[1.0] * 50, [4.0] * 10 + [1.0] * 30, [9.0, 2.0, 2.0, 7.0] * 20]

    spans = [span_in_blocks(counts, 8) for counts in shapes]
    measured = [1.5 * makespan([c + 2.5 for c in counts], 8) for counts in shapes]
    tile_us, block_us, error = fit_costs(spans, measured, [i / 4 for i in range(41)])
    assert tile_us == pytest.approx(3.75)
    assert block_us == pytest.approx(1.5)
    assert error == pytest.approx(0, abs=1e-12)


def test_fit_reads_a_bench_result_and_prints_each_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Times made by the model itself at 3 us per tile and 1.5 per block: the fit finds them.
    rows = []
    for name in ("causal", "random-0.25"):
        mask = masks_for(4, 4096, [name], device="cpu")[name]
        blocks = visited_blocks(mask, 4)
        tiles = kernel_order(mask, heads=4, sms=16)
        span_us = makespan([3 + 1.5 * float(blocks[tile]) for tile in tiles], 16)
        rows.append(
            {
                "seq_len": 4096,
                "head_dim": 64,
                "heads": 4,
                "mask": name,
                "ours_graph_ms": span_us / 1000,
            }
        )
    rows.append(
        {"seq_len": 4096, "head_dim": 128, "heads": 4, "mask": "causal", "ours_graph_ms": 1.0}
    )  # another head dim: left out
    result = tmp_path / "run.json"
    result.write_text(json.dumps({"environment": {}, "rows": rows}))
    assert fit(result, head_dim=64, sms=16) == 0
    out = capsys.readouterr().out
    assert "fitted: 3.00 us per tile + 1.500 us per visited block" in out
    assert out.count(" 1.000\n") == 2
    with pytest.raises(SystemExit, match="no D32 row"):
        fit(result, head_dim=32, sms=16)


def test_the_last_wave_split_spreads_its_tiles_over_the_idle_sms() -> None:
    # 10 tiles on 4 SMs: the last two go two ways each, in near-equal key ranges.
    chunks = last_wave_split([8] * 9 + [7], sms=4, min_chunk_blocks=2)
    assert chunks[:8] == [[8]] * 8
    assert chunks[8:] == [[4, 4], [4, 3]]
    # No chunk below the minimum; a whole last wave, or one wave or less, is left alone.
    assert last_wave_split([8] * 9 + [3], sms=4, min_chunk_blocks=2)[9] == [3]
    assert last_wave_split([8] * 8, sms=4, min_chunk_blocks=2) == [[8]] * 8
    assert last_wave_split([8] * 3, sms=4, min_chunk_blocks=2) == [[8]] * 3


def test_a_split_last_wave_ends_sooner_when_its_tiles_are_long() -> None:
    counts = [128] * 9  # two full waves on 4 SMs and one tile alone in the third
    whole = makespan(split_costs([[c] for c in counts], 3.0, 1.8, 0.4), 4)
    assert whole == 3 * (3.0 + 128 * 1.8)
    chunks = last_wave_split(counts, sms=4, min_chunk_blocks=4)
    assert chunks[-1] == [32] * 4
    split = makespan(split_costs(chunks, 3.0, 1.8, 0.4), 4)
    # The combining chunk ends last: its own blocks, then four partial outputs read.
    assert split == pytest.approx(2 * (3.0 + 128 * 1.8) + 3.0 + 32 * 1.8 + 4 * 0.4)
