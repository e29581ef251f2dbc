"""The resync loop follows kopf's peering rule: pause while a live peer of priority >= ours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sas_operator.peering import PeeringGate
from tests.unit.operator.operator_fakes import FakeCluster

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _peer(priority: int, seen_seconds_ago: float, lifetime: int = 60) -> dict[str, Any]:
    return {
        "priority": priority,
        "lifetime": lifetime,
        "lastseen": (NOW - timedelta(seconds=seen_seconds_ago)).isoformat(),
    }


def _cluster(peers: dict[str, Any], namespace: str = "") -> FakeCluster:
    cluster = FakeCluster()
    kind = "KopfPeering" if namespace else "ClusterKopfPeering"
    metadata = {"name": "sas", **({"namespace": namespace} if namespace else {})}
    cluster.put({"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": metadata, "status": peers})
    return cluster


@pytest.mark.parametrize(
    ("peers", "paused"),
    [
        ({"me": _peer(0, 1)}, False),
        ({"me": _peer(0, 1), "twin": _peer(0, 5)}, True),
        ({"me": _peer(0, 1), "boss": _peer(10, 5)}, True),
        ({"me": _peer(0, 1), "junior": _peer(-5, 5)}, False),
        ({"me": _peer(0, 1), "ghost": _peer(0, 61)}, False),
        ({"me": _peer(0, 1), "unseen": {"priority": 0}}, True),
    ],
)
def test_paused_like_kopf(peers: dict[str, Any], paused: bool) -> None:
    gate = PeeringGate("sas", "me")
    assert gate.paused(_cluster(peers), "", NOW) is paused


def test_namespaced_peering_is_read_per_namespace() -> None:
    cluster = _cluster({"twin": _peer(0, 1)}, namespace="ml")
    gate = PeeringGate("sas", "me")
    assert gate.paused(cluster, "ml", NOW)
    assert not gate.paused(cluster, "other", NOW)


def test_standalone_and_missing_peering_never_pause() -> None:
    cluster = FakeCluster()
    assert not PeeringGate(None, "me").paused(cluster, "", NOW)
    assert not PeeringGate("sas", "me").paused(cluster, "", NOW)
    assert cluster.calls == [("get", "kopf.dev", "clusterkopfpeerings")]
