"""The kopf handlers, run by kopf itself against kmock (an in-memory Kubernetes API server).

kopf watches and annotates the objects in kmock; the reconciler's own calls go to the
in-memory `FakeCluster` injected through `memo.cluster`, so the test sees both what kopf did
(finalizers, annotations, events) and what the operator applied.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import kmock
import kopf
import pytest
from kopf._cogs.structs.credentials import Vault  # kopf 1.45 exports no credentials store

from sas_operator import handlers  # importing registers them in kopf's default registry
from sas_operator.peering import PeeringGate
from sas_operator.reconcile import API_VERSION, Reconciler
from sas_operator.settings import OperatorSettings
from sas_operator.spec import GROUP, KIND, PLURAL, SHORT_NAME, SINGULAR, VERSION
from tests.unit.operator.operator_fakes import FakeCluster, sas_object

SAS = kmock.resource(GROUP, VERSION, PLURAL)
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")


def _declare_resources(server: Any) -> None:
    verbs = {"get", "list", "watch", "create", "patch", "delete", "update"}
    server.resources[SAS] = kmock.ResourceInfo(
        kind=KIND,
        singular=SINGULAR,
        shortnames={SHORT_NAME},
        namespaced=True,
        verbs=verbs,
        subresources={"status", "scale"},
    )
    server.resources[DEPLOYMENTS] = kmock.ResourceInfo(
        kind="Deployment", singular="deployment", namespaced=True, verbs=verbs
    )
    server.resources[kmock.resource("", "v1", "events")] = kmock.ResourceInfo(
        kind="Event", singular="event", namespaced=True, verbs={"create"}
    )
    # kopf waits for these two to be discovered before it starts watching anything.
    server.resources[kmock.resource("", "v1", "namespaces")] = kmock.ResourceInfo(
        kind="Namespace", singular="namespace", namespaced=False, verbs={"list", "watch"}
    )
    server.resources[kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")] = (
        kmock.ResourceInfo(
            kind="CustomResourceDefinition",
            singular="customresourcedefinition",
            namespaced=False,
            verbs={"list", "watch"},
        )
    )


def _service(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}", "generation": 1},
        "spec": spec,
    }


@contextlib.asynccontextmanager
async def running_operator(server: Any, cluster: FakeCluster) -> AsyncIterator[None]:
    vault = Vault()
    await vault.populate({"kmock": kopf.ConnectionInfo(server=str(server.url).rstrip("/"))})
    stop = asyncio.Event()
    ready = asyncio.Event()
    memo = kopf.Memo(
        cluster=cluster,
        settings=OperatorSettings(retry_seconds=0.5, resync_seconds=3600),
        serve_metrics=False,
    )
    task = asyncio.create_task(
        kopf.operator(
            registry=kopf.get_default_registry(),
            standalone=True,
            clusterwide=True,
            vault=vault,
            memo=memo,
            stop_flag=stop,
            ready_flag=ready,
        )
    )
    try:
        await asyncio.wait_for(ready.wait(), 10)
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _until(check: Callable[[], bool], polls: int = 200) -> None:
    """Poll `check` every 50 ms, 10 s at most."""
    for _ in range(polls):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the operator did not get there in time")


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


async def test_a_new_service_is_reconciled_without_a_finalizer(
    kmock: Any, cluster: FakeCluster
) -> None:
    _declare_resources(kmock)
    body = _service("minilm", {"replicas": 2})
    cluster.put(body)
    kmock.objects[SAS, "ml", "minilm"] = body
    async with running_operator(kmock, cluster):
        await _until(lambda: ("Deployment", "minilm") in cluster.kinds())
        await _until(
            lambda: "last-handled-configuration" in str(kmock.objects[SAS, "ml", "minilm"])
        )
    stored = kmock.objects[SAS, "ml", "minilm"].last.raw
    assert not stored["metadata"].get("finalizers")
    assert "kopf" not in (stored.get("status") or {})
    assert f"{GROUP}/last-handled-configuration" in stored["metadata"]["annotations"]
    assert ("PodDisruptionBudget", "minilm") in cluster.kinds()
    status = cluster.view((API_VERSION, KIND, "ml", "minilm"))["status"]  # type: ignore[index]
    assert status["url"] == "http://minilm.ml.svc:80"


async def test_an_owned_deployment_event_reconciles_its_owner(
    kmock: Any, cluster: FakeCluster
) -> None:
    _declare_resources(kmock)
    body = _service("minilm", {})
    cluster.put(body)
    async with running_operator(kmock, cluster):
        kmock.objects[DEPLOYMENTS, "ml", "minilm"] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "minilm",
                "namespace": "ml",
                "labels": {
                    "app.kubernetes.io/managed-by": "sas-operator",
                    "app.kubernetes.io/instance": "minilm",
                },
            },
        }
        await _until(lambda: ("Deployment", "minilm") in cluster.kinds())
    assert any(c[0] == "patch-status" for c in cluster.calls)


async def test_a_missing_secret_retries_slowly_through_kopf(
    kmock: Any, cluster: FakeCluster
) -> None:
    _declare_resources(kmock)
    body = _service("locked", {"security": {"authSecretRef": {"name": "absent"}}})
    cluster.put(body)
    kmock.objects[SAS, "ml", "locked"] = body
    async with running_operator(kmock, cluster):
        await _until(lambda: sum(e["reason"] == "MissingAuthSecret" for e in cluster.events) >= 1)
        cluster.put(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "absent", "namespace": "ml"},
                "data": {"token": "eA=="},
            }
        )
        await _until(lambda: ("Deployment", "locked") in cluster.kinds())
    assert [e["reason"] for e in cluster.events].count("MissingAuthSecret") == 1
    assert not kmock.objects[SAS, "ml", "locked"].last.raw["metadata"].get("finalizers")


def test_no_handler_needs_a_finalizer_or_handles_deletion() -> None:
    registry = kopf.get_default_registry()
    for handler in registry._changing.get_all_handlers():
        assert not handler.requires_finalizer, handler.id
        assert handler.reason not in ("delete",), handler.id
    assert not list(registry._spawning.get_all_handlers())
    assert {h.id for h in registry._changing.get_all_handlers()} == {"on_service"}
    assert {h.id for h in registry._watching.get_all_handlers()} == {"on_owned_deployment"}


def test_resync_reconciles_every_service_in_the_watched_namespaces() -> None:
    cluster = FakeCluster()
    sas_object(cluster, {}, name="a", namespace="ml")
    sas_object(cluster, {}, name="b", namespace="ml")
    sas_object(cluster, {}, name="c", namespace="other")
    settings = OperatorSettings(namespaces=("ml",))
    reconciler = Reconciler(cluster, settings, read_backend=lambda url, *, timeout: None)
    assert handlers.resync_all(reconciler, PeeringGate(None, "me")) == 2
    assert {name for kind, name in cluster.kinds() if kind == "Deployment"} == {"a", "b"}


def test_resync_does_nothing_while_kopf_peering_pauses_the_operator() -> None:
    cluster = FakeCluster()
    sas_object(cluster, {}, name="a", namespace="ml")
    cluster.put(
        {
            "apiVersion": "kopf.dev/v1",
            "kind": "ClusterKopfPeering",
            "metadata": {"name": "sas-operator"},
            "status": {
                "me": {"priority": 0, "lifetime": 60, "lastseen": _now_iso()},
                "other": {"priority": 0, "lifetime": 60, "lastseen": _now_iso()},
            },
        }
    )
    reconciler = Reconciler(cluster, OperatorSettings(), read_backend=lambda url, *, timeout: None)
    assert handlers.resync_all(reconciler, PeeringGate("sas-operator", "me")) == 0
    assert cluster.writes() == []
    assert handlers.resync_all(reconciler, PeeringGate("sas-operator", "me", priority=1)) == 1


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()
