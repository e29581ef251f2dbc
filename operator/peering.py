"""Whether this operator may act now, by kopf's own peering rule.

With peering, kopf pauses its handlers while another live operator of the same or a higher
priority keeps alive in the peering object; the operator's own resync loop is not a kopf
handler, so it asks this gate first and never acts while kopf is paused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sas_operator.cluster import Cluster

__all__ = ["PEERING_API_VERSION", "PeeringGate"]

PEERING_API_VERSION = "kopf.dev/v1"


@dataclass(frozen=True, slots=True)
class PeeringGate:
    """kopf's rule for one operator: pause while another live peer has priority >= ours."""

    name: str | None
    """Peering object name; None runs standalone (never paused)."""

    identity: str
    """This operator's peer id (kopf's POD_ID)."""

    priority: int = 0
    """This operator's peering priority."""

    def paused(self, cluster: Cluster, namespace: str, now: datetime) -> bool:
        """Whether kopf has paused this operator for `namespace` ("" for cluster-wide peering)."""
        if self.name is None:
            return False
        kind = "KopfPeering" if namespace else "ClusterKopfPeering"
        peering = cluster.get(PEERING_API_VERSION, kind, namespace, self.name)
        peers: Mapping[str, Any] = (peering or {}).get("status") or {}
        return any(
            self._blocks(peer, info, now) for peer, info in peers.items() if isinstance(info, dict)
        )

    def _blocks(self, peer: str, info: Mapping[str, Any], now: datetime) -> bool:
        if peer == self.identity or int(info.get("priority", 0)) < self.priority:
            return False
        lastseen = info.get("lastseen")
        if not isinstance(lastseen, str):
            return True
        deadline = datetime.fromisoformat(lastseen) + timedelta(
            seconds=int(info.get("lifetime", 60))
        )
        return deadline > now
