"""An in-memory API server for the operator's tests: the `Cluster` seam, with every call recorded.

Server-side apply is modelled closely enough to test idempotence: the last applied
configuration of our field manager is kept apart from fields written by others (`edit`); an
apply replaces ours and, with conflicts forced, takes back any field it names. Lists are
atomic. An apply that changes the data of an immutable ConfigMap is refused (422), as the API
server refuses it. Calls are recorded as (verb, resource)
so tests can count writes and check them against the RBAC rules.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from sas_operator.reconcile import API_VERSION
from sas_operator.spec import KIND, PLURAL

Key = tuple[str, str, str, str]

WRITE_VERBS = frozenset({"create", "patch", "delete", "patch-status", "create-event"})

PLURALS = {
    "ServiceAccount": "serviceaccounts",
    "ConfigMap": "configmaps",
    "Deployment": "deployments",
    "ReplicaSet": "replicasets",
    "Service": "services",
    "ServiceMonitor": "servicemonitors",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "NetworkPolicy": "networkpolicies",
    "Secret": "secrets",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Event": "events",
    "ClusterKopfPeering": "clusterkopfpeerings",
    "KopfPeering": "kopfpeerings",
    KIND: PLURAL,
}


def _group(api_version: str) -> str:
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of mappings; anything else in `overlay` replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _without(base: Mapping[str, Any], named: Mapping[str, Any]) -> dict[str, Any]:
    """`base` less every leaf path that `named` sets (forced ownership transfer)."""
    out: dict[str, Any] = {}
    for key, value in base.items():
        if key not in named:
            out[key] = copy.deepcopy(value)
        elif isinstance(value, Mapping) and isinstance(named[key], Mapping):
            rest = _without(value, named[key])
            if rest:
                out[key] = rest
    return out


@dataclass
class StoredObject:
    ours: dict[str, Any]
    theirs: dict[str, Any]
    uid: str
    version: int

    def view(self) -> dict[str, Any]:
        obj = merge(self.ours, self.theirs)
        obj["metadata"]["uid"] = self.uid
        obj["metadata"]["resourceVersion"] = str(self.version)
        return obj


@dataclass
class FakeCluster:
    """`sas_operator.cluster.Cluster` in memory."""

    served_kinds: set[tuple[str, str]] = field(default_factory=set)
    """Kinds served beyond the built-in ones (add the ServiceMonitor to 'install' it)."""
    objects: dict[Key, StoredObject] = field(default_factory=dict)
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    """(verb, api group, resource) of every call."""
    events: list[dict[str, Any]] = field(default_factory=list)
    _uids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def _record(self, verb: str, api_version: str, kind: str) -> None:
        self.calls.append((verb, _group(api_version), PLURALS[kind]))

    def writes(self) -> list[tuple[str, str, str]]:
        return [c for c in self.calls if c[0] in WRITE_VERBS]

    # -- test helpers --------------------------------------------------------------------------

    def put(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Store an object as if someone else created it."""
        key = (
            obj["apiVersion"],
            obj["kind"],
            obj["metadata"].get("namespace", ""),
            obj["metadata"]["name"],
        )
        stored = StoredObject({}, copy.deepcopy(dict(obj)), f"uid-{next(self._uids)}", 1)
        self.objects[key] = stored
        return stored.view()

    def edit(self, key: Key, patch: Mapping[str, Any]) -> None:
        """Another writer changes fields (drift, or a controller's status)."""
        stored = self.objects[key]
        stored.theirs = merge(stored.theirs, patch)
        stored.version += 1

    def view(self, key: Key) -> dict[str, Any] | None:
        stored = self.objects.get(key)
        return stored.view() if stored else None

    def kinds(self) -> list[tuple[str, str]]:
        return sorted((k[1], k[3]) for k in self.objects)

    # -- the Cluster protocol -----------------------------------------------------------------

    def served(self, api_version: str, kind: str) -> bool:
        self.calls.append(("discover", _group(api_version), api_version))
        return (api_version, kind) in self.served_kinds or not api_version.startswith(
            "monitoring.coreos.com"
        )

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self._record("get", api_version, kind)
        return self.view((api_version, kind, namespace, name))

    def list(
        self, api_version: str, kind: str, namespace: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        self._record("list", api_version, kind)
        found = []
        for (version, found_kind, ns, _), stored in sorted(self.objects.items()):
            obj = stored.view()
            obj_labels = obj["metadata"].get("labels") or {}
            if (
                (version, found_kind) == (api_version, kind)
                and namespace in ("", ns)
                and all(obj_labels.get(k) == v for k, v in labels.items())
            ):
                found.append(obj)
        return found

    def apply(self, obj: Mapping[str, Any], *, field_manager: str) -> dict[str, Any]:
        if obj["apiVersion"].startswith("monitoring.coreos.com") and (
            (obj["apiVersion"], obj["kind"]) not in self.served_kinds
        ):
            raise LookupError(f"{obj['kind']} is not served")
        key = (
            obj["apiVersion"],
            obj["kind"],
            obj["metadata"]["namespace"],
            obj["metadata"]["name"],
        )
        stored = self.objects.get(key)
        self._record("patch", obj["apiVersion"], obj["kind"])
        if stored is None:
            self._record("create", obj["apiVersion"], obj["kind"])
        if stored is None:
            candidate = StoredObject(copy.deepcopy(dict(obj)), {}, f"uid-{next(self._uids)}", 1)
        else:
            theirs = _without(stored.theirs, obj)
            before, after = merge(stored.ours, stored.theirs), merge(obj, theirs)
            if before.get("immutable") is True and any(
                after.get(f) != before.get(f) for f in ("immutable", "data", "binaryData")
            ):
                raise ApiException(status=422, reason="Invalid: field is immutable")
            changed = after != before
            candidate = StoredObject(
                copy.deepcopy(dict(obj)), theirs, stored.uid, stored.version + int(changed)
            )
        self.objects[key] = candidate
        return candidate.view()

    def delete(self, api_version: str, kind: str, namespace: str, name: str, *, uid: str) -> None:
        self._record("delete", api_version, kind)
        key = (api_version, kind, namespace, name)
        stored = self.objects.get(key)
        if stored is not None and stored.uid == uid:
            del self.objects[key]

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        self.calls.append(("patch-status", _group(api_version), f"{PLURALS[kind]}/status"))
        stored = self.objects[(api_version, kind, namespace, name)]
        current = stored.theirs.get("status") or {}
        stored.theirs["status"] = {k: v for k, v in merge(current, status).items() if v is not None}
        stored.version += 1

    def create_event(
        self, involved: Mapping[str, Any], *, type: str, reason: str, message: str
    ) -> None:
        self.calls.append(("create-event", "", "events"))
        self.events.append({"type": type, "reason": reason, "message": message})


def sas_object(
    cluster: FakeCluster, spec: Mapping[str, Any], *, name: str = "minilm", namespace: str = "ml"
) -> Key:
    """Create a SparseAttentionService in the fake cluster; returns its key."""
    cluster.put(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "namespace": namespace, "generation": 1},
            "spec": dict(spec),
        }
    )
    return (API_VERSION, KIND, namespace, name)


def make_deployment_ready(cluster: FakeCluster, namespace: str, name: str) -> None:
    """Play the Deployment controller: every wanted pod up to date and ready."""
    key = ("apps/v1", "Deployment", namespace, name)
    deployment = cluster.view(key)
    assert deployment is not None
    replicas = deployment["spec"].get("replicas", 1)
    cluster.edit(
        key,
        {
            "metadata": {"generation": 1},
            "status": {
                "observedGeneration": 1,
                "replicas": replicas,
                "readyReplicas": replicas,
                "updatedReplicas": replicas,
                "availableReplicas": replicas,
            },
        },
    )


def put_replica_set(
    cluster: FakeCluster, namespace: str, name: str, *, replicas: int, pods: int
) -> Key:
    """Play the Deployment controller: a ReplicaSet of the Deployment's current pod template
    (its labels too) that wants `replicas` pods and has `pods`; returns its key."""
    deployment = cluster.view(("apps/v1", "Deployment", namespace, name))
    assert deployment is not None
    template = deployment["spec"]["template"]
    replica_set_name = f"{name}-{len(cluster.objects)}"
    cluster.put(
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": replica_set_name,
                "namespace": namespace,
                "labels": dict(template["metadata"]["labels"]),
            },
            "spec": {"replicas": replicas, "template": template},
            "status": {"replicas": pods},
        }
    )
    return ("apps/v1", "ReplicaSet", namespace, replica_set_name)
