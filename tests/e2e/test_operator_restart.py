"""Operator restarts: a clean restart writes nothing; crashes mid-reconcile still converge."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from hack.cluster.cluster import LocalCluster
from hack.cluster.kube import Kubectl, wait_for
from hack.cluster.operator_process import OperatorProcess

from .services import (
    CHILD_KINDS,
    RESYNC_SECONDS,
    SAS,
    children,
    config_map_of,
    resource_versions,
    sas,
    wait_ready,
)

pytestmark = pytest.mark.e2e

KOPF_PEER_LIFETIME_SECONDS = 60
"""With peering on (the chart's default), a killed operator's keep-alive lingers this long, and
kopf pauses the restarted one (same priority) until it expires."""
CHILD_RESOURCES = {kind.split(".")[0] for kind in CHILD_KINDS} | {"servicemonitors"}


def _writes_to_children(audit_log: Path, user: str, namespace: str, since: int) -> list[str]:
    """Writes `user` made to child objects in `namespace`, from byte offset `since` of the log."""
    with audit_log.open() as log:
        log.seek(since)
        events = [json.loads(line) for line in log if line.strip()]
    return [
        f"{event['verb']} {ref.get('resource')}/{ref.get('name')}"
        for event in events
        if event["user"]["username"] == user
        and (ref := event.get("objectRef", {})).get("namespace") == namespace
        and ref.get("resource") in CHILD_RESOURCES
    ]


def test_restart_changes_no_child(kube: Kubectl, operator: OperatorProcess) -> None:
    kube.apply(
        sas("steady", replicas=2),
        sas("scaling", autoscaling={"minReplicas": 1, "maxReplicas": 3}),
        sas("fenced", security={"allowFrom": [{"podSelector": {"matchLabels": {"app": "x"}}}]}),
    )
    for name in ("steady", "scaling", "fenced"):
        wait_ready(kube, name)
    time.sleep(RESYNC_SECONDS)  # let the controllers finish their own status writes
    before = resource_versions([c for n in ("steady", "fenced") for c in children(kube, n)])

    operator.stop()
    operator.start()
    time.sleep(2 * RESYNC_SECONDS + 2)  # a resume pass plus two resyncs

    after = resource_versions([c for n in ("steady", "fenced") for c in children(kube, n)])
    assert after == before


def test_no_op_resync_sends_no_write_requests_for_children(
    kube: Kubectl,
    operator: OperatorProcess,
    cluster: LocalCluster,
    operator_user: tuple[Path, str],
) -> None:
    # Beside a plain service, specs whose children hold empty values the API server leaves
    # out of what it returns (an empty selector's matchLabels, an empty toleration value, a
    # policy with no ingress rule): the live objects must still read as applied.
    kube.apply(
        sas("quiet", replicas=2),
        sas(
            "sparse",
            scheduling={"tolerations": [{"key": "", "operator": "Exists", "value": ""}]},
            security={
                "allowFrom": [
                    {"podSelector": {}},
                    {"namespaceSelector": {"matchLabels": {}}, "podSelector": {}},
                ]
            },
        ),
        sas("closed", security={"allowFrom": []}),
    )
    for name in ("quiet", "sparse", "closed"):
        wait_ready(kube, name)
    time.sleep(RESYNC_SECONDS)  # let the first passes and the controllers settle
    audit_offset = cluster.audit_log.stat().st_size

    time.sleep(2 * RESYNC_SECONDS + 2)  # two resyncs

    writes = _writes_to_children(
        cluster.audit_log, operator_user[1], str(kube.namespace), audit_offset
    )
    assert writes == []


def test_killing_the_operator_mid_reconcile_still_converges(
    kube: Kubectl, operator: OperatorProcess
) -> None:
    names = [f"crash-{i}" for i in range(3)]
    operator.stop()
    for attempt in range(10):
        kube.apply(*(sas(name, replicas=1 + attempt % 3) for name in names))
        operator.start(wait=False)
        time.sleep(0.4 * (attempt + 1))
        operator.kill()
    operator.start()

    for name in names:
        service = wait_ready(kube, name, timeout=KOPF_PEER_LIFETIME_SECONDS + 60)
        assert service["spec"]["replicas"] == 1 + 9 % 3
        made = children(kube, name)
        kinds = [child["kind"] for child in made]
        assert len(kinds) == len(set(kinds)), f"duplicate children of {name}: {kinds}"
        config_map = config_map_of(kube, name)["metadata"]["name"]
        assert all(
            child["metadata"]["name"] == (config_map if child["kind"] == "ConfigMap" else name)
            for child in made
        )
        replica_sets = [
            rs for rs in kube.list("replicasets") if rs["metadata"]["name"].startswith(f"{name}-")
        ]
        assert len(replica_sets) == 1, "the pod template must not change across crashes"
    wait_for(
        "each Deployment to run the final replica count",
        lambda: all(
            (kube.get("deployments", name) or {}).get("status", {}).get("readyReplicas") == 1
            for name in names
        ),
        60,
    )
    assert sorted(s["metadata"]["name"] for s in kube.list(SAS)) == names
