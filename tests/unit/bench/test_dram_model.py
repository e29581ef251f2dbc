"""bench.dram_model: the schedule model's block reads through an LRU L2."""

from __future__ import annotations

import pytest

from bench import dram_model as dm
from bench.kernel_case import case_mask
from bench.schedule_model import descending, visited_blocks


def test_an_lru_cache_misses_once_per_block_while_they_fit() -> None:
    reads = [(0.0, 0, 1), (1.0, 0, 2), (2.0, 0, 1), (3.0, 1, 1)]
    assert dm.dram_reads(reads, capacity=4) == (3, 3)


def test_an_lru_cache_evicts_the_least_recently_read() -> None:
    # Capacity 2: block 1 is read again after 2 and 3 pushed it out.
    reads = [(0.0, 0, 1), (1.0, 0, 2), (2.0, 0, 3), (3.0, 0, 1), (4.0, 0, 3)]
    assert dm.dram_reads(reads, capacity=2) == (4, 3)


def test_reads_are_in_time_order_across_ctas() -> None:
    lists = [[[0, 1], [2]]]  # one head: query block 0 reads blocks 0 and 1, block 1 reads 2
    reads = dm.block_reads([(0, 1), (0, 0)], lists, tile_us=1.0, block_us=2.0, sms=2)
    # Both tiles start at 0 on their own CTA; each reads its j-th block at 1 + 2 j.
    assert reads == [(1.0, 0, 0), (1.0, 0, 2), (3.0, 0, 1)]


def test_block_lists_follow_the_mask() -> None:
    mask = case_mask("causal", 2, 512, device="cpu")
    lists = dm.block_lists(mask, 2)
    assert lists[0] == lists[1]
    assert [len(blocks) for blocks in lists[0]] == visited_blocks(mask, 2)[0].tolist()
    assert sorted(lists[0][3]) == [0, 1, 2, 3]


def test_one_head_at_a_time_reads_each_block_once_and_a_small_l2_more() -> None:
    mask = case_mask("random-0.5", 8, 2048, device="cpu")
    order = descending(visited_blocks(mask, 8), 0)

    def over_least(capacity: int) -> float:
        return dm.kv_over_least(
            mask, order, 8, tile_us=2.0, block_us=1.8, sms=16, capacity=capacity
        )

    assert over_least(10_000) == 1.0
    assert over_least(4) > 1.5


def test_the_model_at_its_default_l2_reproduces_the_measured_reads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--check`: every ncu measurement of runs 20 and 21 within 7% (25 MB of L2)."""
    assert dm.main(["--check"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert len(lines) == len(dm.MEASURED)
    for *_, model, _, measured in lines:
        assert abs(float(model) / float(measured) - 1) < 0.07
