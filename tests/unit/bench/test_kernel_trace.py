"""bench.kernel_trace's CPU parts: reading csrc/trace.h's timeline into per-tile intervals."""

from __future__ import annotations

import pytest

from bench import kernel_trace as kt

CYCLES_PER_US = 1700  # the SM clock of the synthetic CTAs: 1.7 GHz
PER_TILE_US = 3.0
PER_BLOCK_US = 1.8


def empty_trace(ctas: int) -> list[list[list[int]]]:
    return [[[0] * kt.TRACE_EVENTS for _ in range(kt.TRACE_TILES + 1)] for _ in range(ctas)]


def fill_cta(rows: list[list[int]], block_counts: list[int], start_ns: int) -> None:
    """A CTA whose tiles take PER_TILE_US + blocks * PER_BLOCK_US each: Q lands 0.5 us after
    a tile is read, K0 0.25 us later, the first block takes 0.6 us, the epilogue 0.75 us
    (normalise 0.1, to shared 0.4, store issue 0.25) and the next tile is read at once; the
    producer posts each tile 1 us after the last V of the one before (issued 2 us into it), Q
    0.1 us later and K0 0.2 us later."""
    clock = 1000  # the CTA's start, in cycles

    def at(us: float) -> int:
        return clock + round(us * CYCLES_PER_US)

    now = 0.1
    last_v = None
    for index, blocks in enumerate(block_counts):
        row = rows[index]
        posted = now - 0.5 if last_v is None else last_v + 1.0
        row[kt.PRODUCER_POSTED] = at(posted)
        row[kt.PRODUCER_Q_ISSUED] = at(posted + 0.1)
        row[kt.PRODUCER_K0_ISSUED] = at(posted + 0.2)
        row[kt.BLOCKS] = blocks
        tile_us = PER_TILE_US + blocks * PER_BLOCK_US
        for wg in range(kt.WARPGROUPS):
            base = kt.CONSUMER + kt.CONSUMER_STRIDE * wg
            row[base + kt.TAKEN] = at(now)
            row[base + kt.Q_READY] = at(now + 0.5)
            row[base + kt.K0_READY] = at(now + 0.75)
            row[base + kt.FIRST_BLOCK_DONE] = at(now + 1.35)
            row[base + kt.LOOP_DONE] = at(now + tile_us - 0.75)
            row[base + kt.NORMALISED] = at(now + tile_us - 0.65)
            row[base + kt.OUTPUT_IN_SHARED] = at(now + tile_us - 0.25)
            row[base + kt.STORED] = at(now + tile_us)
        last_v = now + 2.0
        row[kt.PRODUCER_LAST_V_ISSUED] = at(last_v)
        now += tile_us
    header = rows[kt.TRACE_TILES]
    header[kt.START_CLOCK] = clock
    header[kt.START_NS] = start_ns
    header[kt.END_CLOCK] = at(now)
    header[kt.END_NS] = start_ns + round(now * 1000)
    header[kt.SM] = 7


def test_intervals_are_read_in_microseconds_at_each_ctas_clock() -> None:
    trace = empty_trace(3)  # the third CTA was never launched
    fill_cta(trace[0], [2, 4, 6], start_ns=10_000)
    fill_cta(trace[1], [3, 5], start_ns=10_500)
    records = kt.tile_records(trace)
    assert [(r["cta"], r["index"], r["block_count"]) for r in records] == [
        (0, 0, 2),
        (0, 1, 4),
        (0, 2, 6),
        (1, 0, 3),
        (1, 1, 5),
    ]
    second = records[1]
    assert second["wait for Q"] == pytest.approx(0.5, abs=1e-3)
    assert second["wait for K0"] == pytest.approx(0.25, abs=1e-3)
    assert second["blocks"] == pytest.approx(PER_TILE_US + 4 * PER_BLOCK_US - 1.5, abs=1e-3)
    assert second["first block"] == pytest.approx(0.6, abs=1e-3)
    assert second["epilogue"] == pytest.approx(0.75, abs=1e-3)
    assert second["normalise"] == pytest.approx(0.1, abs=1e-3)
    assert second["to shared"] == pytest.approx(0.4, abs=1e-3)
    assert second["store issue"] == pytest.approx(0.25, abs=1e-3)
    assert second["wait for tile"] == pytest.approx(0.0, abs=1e-3)
    assert second["tile"] == pytest.approx(PER_TILE_US + 4 * PER_BLOCK_US, abs=1e-3)
    assert second["schedule"] == pytest.approx(1.0, abs=1e-3)
    # Posted 1 us after the last V issued 2 us into the previous tile: Q went out 0.1 us later.
    previous_tile = PER_TILE_US + 2 * PER_BLOCK_US
    assert second["posted ahead"] == pytest.approx(previous_tile - 3.0, abs=1e-3)
    assert second["Q issued ahead"] == pytest.approx(previous_tile - 3.1, abs=1e-3)
    assert second["K0 issued ahead"] == pytest.approx(previous_tile - 3.2 + 0.5, abs=1e-3)
    # Each CTA's last tile has no next one to end it; its first has no previous one.
    assert records[2]["tile"] is None
    assert records[4]["tile"] is None
    assert records[0]["schedule"] is None
    assert records[0]["wait for tile"] is None


def test_each_warpgroup_waits_for_the_tile_from_its_own_stores() -> None:
    trace = empty_trace(1)
    fill_cta(trace[0], [2, 4, 6], start_ns=0)
    # The second warpgroup stores the first tile 0.3 us late and reads the next 0.5 us late:
    # the first waited 0 us for it, the second 0.2 us.
    base = kt.CONSUMER + kt.CONSUMER_STRIDE
    trace[0][0][base + kt.STORED] += round(0.3 * CYCLES_PER_US)
    trace[0][1][base + kt.TAKEN] += round(0.5 * CYCLES_PER_US)
    second = kt.tile_records(trace)[1]
    assert second["wait for tile"] == pytest.approx(0.2 / 2, abs=1e-3)


def test_the_fit_recovers_the_per_tile_and_per_block_costs() -> None:
    trace = empty_trace(2)
    fill_cta(trace[0], [1, 2, 4, 8, 16, 3], start_ns=0)
    fill_cta(trace[1], [5, 7, 9, 2], start_ns=0)
    fit = kt.tile_fit(kt.tile_records(trace))
    assert fit is not None
    assert fit["per_tile_us"] == pytest.approx(PER_TILE_US, abs=1e-3)
    assert fit["per_block_us"] == pytest.approx(PER_BLOCK_US, abs=1e-3)
    assert fit["tiles"] == 6  # past each CTA's first, with a next tile to end them


def test_one_block_count_is_not_enough_to_fit() -> None:
    trace = empty_trace(1)
    fill_cta(trace[0], [4, 4, 4, 4], start_ns=0)
    assert kt.tile_fit(kt.tile_records(trace)) is None


def test_summaries_split_the_first_tiles_from_the_rest() -> None:
    trace = empty_trace(2)
    fill_cta(trace[0], [2, 4, 6], start_ns=1_000)
    fill_cta(trace[1], [3, 5], start_ns=3_000)
    records = kt.tile_records(trace)
    later = kt.interval_summary(records)
    first = kt.interval_summary(records, first_tiles=True)
    assert later["blocks"]["mean"] == pytest.approx(
        PER_TILE_US - 1.5 + PER_BLOCK_US * (4 + 6 + 5) / 3, abs=1e-3
    )
    assert "schedule" in later
    assert "schedule" not in first
    assert first["wait for Q"]["median"] == pytest.approx(0.5, abs=1e-3)
    launch = kt.launch_summary(trace)
    assert launch["ctas"] == 2
    assert launch["start_spread_us"] == pytest.approx(2.0)
    assert launch["clock_ghz"] == pytest.approx(CYCLES_PER_US / 1000, rel=1e-3)


def test_an_empty_tile_is_kept_but_left_out_of_the_summary() -> None:
    trace = empty_trace(1)
    fill_cta(trace[0], [2, 3, 4], start_ns=0)
    row = trace[0][1]
    for event in range(kt.TRACE_EVENTS):  # the middle tile: read, no blocks, nothing else
        if event not in (kt.CONSUMER + kt.TAKEN, kt.CONSUMER + kt.CONSUMER_STRIDE + kt.TAKEN):
            row[event] = 0
    records = kt.tile_records(trace)
    assert [r["block_count"] for r in records] == [2, 0, 4]
    assert records[1]["wait for Q"] is None
    assert kt.interval_summary(records)["wait for Q"]["mean"] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("text", ["random-0.1 4096", "random-0.1 4k 128", ""])
def test_a_bad_case_is_refused_with_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match="MASK SEQ_LEN HEAD_DIM"):
        kt.Case.parse(text)
