"""bench.graph_node_cost's arithmetic on the sides' medians (CPU)."""

from __future__ import annotations

import pytest

from bench.graph_node_cost import node_cost


def test_the_node_cost_is_the_extra_memsets_time_in_microseconds_and_share() -> None:
    cost = node_cost({"ours": 0.140, "ours+memset": 0.1415, "memset": 0.0012})
    assert cost["node_us"] == pytest.approx(1.5)
    assert cost["node_share"] == pytest.approx(0.0015 / 0.140)
    assert cost["memset_alone_us"] == pytest.approx(1.2)


def test_a_side_that_never_captured_gives_no_cost() -> None:
    cost = node_cost({"ours": 0.140, "ours+memset": None, "memset": 0.0012})
    assert cost == {"node_us": None, "node_share": None, "memset_alone_us": None}
