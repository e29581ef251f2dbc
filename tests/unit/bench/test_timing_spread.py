"""bench.timing_spread's summary of alternating rounds (CPU: pure arithmetic on times)."""

from __future__ import annotations

import pytest

from bench.timing_spread import summarise


def _side(single: list[float], queued: float, graph: float | None) -> dict[str, object]:
    return {"began": "t", "single": single, "queued": queued, "graph": graph}


def test_medians_pool_every_rounds_single_calls_and_ratios_compare_like_with_like() -> None:
    rounds = [
        {
            "ours": _side([7.0, 8.0], 7.0, 7.0),
            "flex": _side([10.0, 11.0], 10.5, 10.5),
            "cudnn": _side([7.0], 7.0, 7.0),
        },
        {
            "ours": _side([9.0], 7.2, 7.2),
            "flex": _side([12.0], 10.7, 10.7),
            "cudnn": _side([7.1], 7.1, 7.1),
        },
    ]
    summary = summarise(rounds)
    assert summary["medians_ms"]["ours"] == {"single": 8.0, "queued": 7.1, "graph": 7.1}
    assert summary["flex_over_ours"]["single"] == pytest.approx(11.0 / 8.0)
    assert summary["flex_over_ours"]["graph"] == pytest.approx(10.6 / 7.1)


def test_a_side_that_never_captured_has_no_graph_median_or_ratio() -> None:
    rounds = [
        {
            "ours": _side([1.0], 1.0, 1.0),
            "flex": _side([2.0], 2.0, None),
            "cudnn": _side([1.0], 1.0, 1.0),
        }
    ]
    summary = summarise(rounds)
    assert summary["medians_ms"]["flex"]["graph"] is None
    assert summary["flex_over_ours"]["graph"] is None
    assert summary["flex_over_ours"]["queued"] == pytest.approx(2.0)
