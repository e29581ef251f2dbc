"""The schedule model: makespans of list scheduling, and the tile orders it compares."""

from __future__ import annotations

import pytest
import torch

from bench.kernel import masks_for
from bench.schedule_model import (
    ORDERS,
    global_rows_first,
    heads_in_flight,
    length_classes_first,
    makespan,
    visited_blocks,
)


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
