"""`KubernetesCluster` speaks the Kubernetes API as the reconciler expects: checked against
kmock (an in-memory API server), by the requests it sends and the answers it returns."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kmock
from kubernetes import client

from sas_operator.cluster import EVENT_SOURCE, KubernetesCluster

CONFIG_MAPS = kmock.resource("", "v1", "configmaps")
SAS = kmock.resource("sparseattention.io", "v1alpha1", "sparseattentionservices")
VERBS = {"get", "list", "watch", "create", "patch", "delete"}


def _declare(server: Any) -> None:
    server.resources[CONFIG_MAPS] = kmock.ResourceInfo(
        kind="ConfigMap", singular="configmap", namespaced=True, verbs=VERBS
    )
    server.resources[SAS] = kmock.ResourceInfo(
        kind="SparseAttentionService",
        singular="sparseattentionservice",
        namespaced=True,
        verbs=VERBS,
        subresources={"status"},
    )
    server.resources[kmock.resource("", "v1", "events")] = kmock.ResourceInfo(
        kind="Event", singular="event", namespaced=True, verbs={"create"}
    )


async def _cluster(server: Any) -> KubernetesCluster:
    configuration = client.Configuration(host=str(server.url).rstrip("/"))
    return await asyncio.to_thread(KubernetesCluster, client.ApiClient(configuration))


def _last(server: Any, method: str) -> Any:
    return next(r for r in reversed(list(server)) if r.method.value == method)


CONFIG_MAP = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "minilm", "namespace": "ml", "labels": {"a": "1"}},
    "data": {"config.json": "{}"},
}


async def test_discovery_says_what_is_served(kmock: Any) -> None:
    _declare(kmock)
    cluster = await _cluster(kmock)
    assert await asyncio.to_thread(cluster.served, "v1", "ConfigMap")
    assert await asyncio.to_thread(
        cluster.served, "sparseattention.io/v1alpha1", "SparseAttentionService"
    )
    assert not await asyncio.to_thread(cluster.served, "monitoring.coreos.com/v1", "ServiceMonitor")


async def test_get_and_list(kmock: Any) -> None:
    _declare(kmock)
    kmock.objects[CONFIG_MAPS, "ml", "minilm"] = CONFIG_MAP
    # kmock's own listing has no kind, which the dynamic client needs: answer as Kubernetes does.
    kmock["get /api/v1/namespaces/ml/configmaps"] << {
        "apiVersion": "v1",
        "kind": "ConfigMapList",
        "metadata": {},
        "items": [CONFIG_MAP],
    }
    cluster = await _cluster(kmock)
    found = await asyncio.to_thread(cluster.get, "v1", "ConfigMap", "ml", "minilm")
    assert found is not None
    assert found["data"] == {"config.json": "{}"}
    assert await asyncio.to_thread(cluster.get, "v1", "ConfigMap", "ml", "absent") is None
    listed = await asyncio.to_thread(cluster.list, "v1", "ConfigMap", "ml", {"b": "2", "a": "1"})
    assert [o["metadata"]["name"] for o in listed] == ["minilm"]
    assert _last(kmock, "GET").params["labelSelector"] == "a=1,b=2"


async def test_apply_is_a_forced_server_side_apply(kmock: Any) -> None:
    _declare(kmock)
    kmock.objects[CONFIG_MAPS, "ml", "minilm"] = CONFIG_MAP
    cluster = await _cluster(kmock)
    await asyncio.to_thread(cluster.apply, CONFIG_MAP, field_manager="sas-operator")
    request = _last(kmock, "PATCH")
    assert request.url.path == "/api/v1/namespaces/ml/configmaps/minilm"
    assert request.headers["Content-Type"] == "application/apply-patch+yaml"
    assert request.params["fieldManager"] == "sas-operator"
    assert request.params["force"] == "true"
    assert "dryRun" not in request.params
    assert json.loads(request.body) == CONFIG_MAP


async def test_delete_is_guarded_by_the_uid(kmock: Any) -> None:
    _declare(kmock)
    kmock.objects[CONFIG_MAPS, "ml", "minilm"] = CONFIG_MAP
    cluster = await _cluster(kmock)
    await asyncio.to_thread(cluster.delete, "v1", "ConfigMap", "ml", "minilm", uid="u-1")
    request = _last(kmock, "DELETE")
    assert json.loads(request.body)["preconditions"] == {"uid": "u-1"}
    await asyncio.to_thread(cluster.delete, "v1", "ConfigMap", "ml", "minilm", uid="u-1")


async def test_status_is_merge_patched_on_the_subresource(kmock: Any) -> None:
    _declare(kmock)
    kmock.objects[SAS, "ml", "minilm"] = {
        "apiVersion": "sparseattention.io/v1alpha1",
        "kind": "SparseAttentionService",
        "metadata": {"name": "minilm", "namespace": "ml"},
        "spec": {},
    }
    cluster = await _cluster(kmock)
    await asyncio.to_thread(
        cluster.patch_status,
        "sparseattention.io/v1alpha1",
        "SparseAttentionService",
        "ml",
        "minilm",
        {"url": "http://minilm.ml.svc:80", "backend": None},
    )
    request = _last(kmock, "PATCH")
    assert request.url.path.endswith("/namespaces/ml/sparseattentionservices/minilm/status")
    assert request.headers["Content-Type"] == "application/merge-patch+json"
    assert json.loads(request.body) == {
        "status": {"url": "http://minilm.ml.svc:80", "backend": None}
    }


async def test_events_name_the_service(kmock: Any) -> None:
    _declare(kmock)
    cluster = await _cluster(kmock)
    involved = {
        "apiVersion": "sparseattention.io/v1alpha1",
        "kind": "SparseAttentionService",
        "metadata": {"name": "minilm", "namespace": "ml", "uid": "u-1"},
    }
    await asyncio.to_thread(
        cluster.create_event, involved, type="Warning", reason="MissingAuthSecret", message="m"
    )
    event = json.loads(_last(kmock, "POST").body)
    assert event["involvedObject"]["uid"] == "u-1"
    assert (event["type"], event["reason"], event["source"]["component"]) == (
        "Warning",
        "MissingAuthSecret",
        EVENT_SOURCE,
    )
