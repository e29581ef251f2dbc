"""Idempotent apply of a service's children: server-side apply, owner references, pruning.

A wanted object is applied only when the live one differs: when a field we set has another
value there (drift), or when the hash of what we last applied, kept in an annotation, is not
the hash of what we want now (a field we no longer set must be dropped by the apply). Fields
the API server defaults or other controllers own do not count. So a resync with nothing to
correct sends no write request at all. Children carrying this service's labels and owner
reference that the spec no longer wants are deleted, except a ConfigMap that the pod template
of one of the service's ReplicaSets with pods still mounts: old pods of a rolling (or stuck)
rollout, and their restarts, read their config from it until the ReplicaSet scales to 0 (a
later pass then deletes it). A Deployment whose replicas pass to an HPA keeps its live count
through the handover (`handover_manager`). An immutable object (the config ConfigMap) whose
live data is not the wanted data cannot be applied; when it is ours, it is deleted and created
anew.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sas_operator.cluster import Cluster, ObjectKey, object_key
from sas_operator.render import MANAGED_BY, pod_selector
from sas_operator.spec import GROUP

__all__ = [
    "APPLIED_HASH_ANNOTATION",
    "CHILD_KINDS",
    "ApplyResult",
    "Owner",
    "apply_children",
    "covers",
    "handover_manager",
    "owner_reference",
]

APPLIED_HASH_ANNOTATION = f"{GROUP}/applied-hash"
"""Annotation on every child: sha256 of the object as we last applied it."""

CHILD_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ServiceAccount"),
    ("v1", "ConfigMap"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
)
"""Every (apiVersion, kind) that render may produce: the kinds pruning looks through."""


@dataclass(frozen=True, slots=True)
class Owner:
    """The SparseAttentionService that owns the children."""

    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one pass did, each entry 'Kind/name'."""

    applied: tuple[str, ...]
    """Objects created or changed."""

    unchanged: tuple[str, ...]
    """Objects already as wanted (nothing written)."""

    pruned: tuple[str, ...]
    """Objects deleted because the spec no longer wants them."""

    live: Mapping[ObjectKey, Mapping[str, Any]]
    """Every wanted object as the API server holds it after the pass."""

    @property
    def changed(self) -> bool:
        return bool(self.applied or self.pruned)


def owner_reference(owner: Owner) -> dict[str, Any]:
    """The controller owner reference every child carries (garbage collection follows it)."""
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _owned(obj: Mapping[str, Any], owner: Owner) -> dict[str, Any]:
    """The object as applied: with the owner reference and the hash of itself."""
    owned = copy.deepcopy(dict(obj))
    owned["metadata"]["ownerReferences"] = [owner_reference(owner)]
    digest = hashlib.sha256(json.dumps(owned, sort_keys=True).encode()).hexdigest()
    owned["metadata"]["annotations"] = {
        **owned["metadata"].get("annotations", {}),
        APPLIED_HASH_ANNOTATION: digest,
    }
    return owned


_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$"
)
_QUANTITY_SUFFIXES: dict[str | None, Decimal] = {
    None: Decimal(1),
    "m": Decimal("0.001"),
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate(("k", "M", "G", "T", "P", "E"))},
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}


def _quantity(text: str) -> Decimal | None:
    """The value of a Kubernetes quantity string, None when `text` is not one."""
    match = _QUANTITY.match(text)
    return Decimal(match[1]) * _QUANTITY_SUFFIXES[match[2]] if match else None


def covers(live: Any, wanted: Any) -> bool:
    """Whether `live` holds every field of `wanted` with the same value. Maps may hold more
    (defaults, other owners' fields); lists must match element by element; quantities match
    by value (the API server rewrites 0.5 as 500m)."""
    if isinstance(wanted, Mapping):
        return isinstance(live, Mapping) and all(
            key in live and covers(live[key], value) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(live, list)
            and len(live) == len(wanted)
            and all(covers(have, want) for have, want in zip(live, wanted, strict=True))
        )
    if isinstance(live, str) and isinstance(wanted, str) and live != wanted:
        have, want = _quantity(live), _quantity(wanted)
        return have is not None and have == want
    return bool(live == wanted)


def handover_manager(field_manager: str) -> str:
    """The field manager that keeps a replica count the operator stops setting."""
    return f"{field_manager}-handover"


def _drops_replicas(live: Mapping[str, Any], wanted: Mapping[str, Any], field_manager: str) -> bool:
    """Whether applying `wanted` (a scaled kind without spec.replicas: an HPA owns the count
    now) would drop a live replica count that `field_manager` alone holds. Server-side apply
    removes such a field, and the API server then defaults it to 1 until the HPA scales back."""
    if "replicas" in wanted.get("spec", {}) or "replicas" not in live.get("spec", {}):
        return False
    holders = [
        entry.get("manager")
        for entry in live.get("metadata", {}).get("managedFields") or []
        if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
    ]
    return holders == [field_manager]


def _replicas_handover(live: Mapping[str, Any]) -> dict[str, Any]:
    """The live replica count alone, applied by `handover_manager` before the operator's own
    manager lets go of it (the Kubernetes docs' transfer of ownership to an HPA); the HPA
    takes it over the first time it scales."""
    return {
        "apiVersion": live["apiVersion"],
        "kind": live["kind"],
        "metadata": {"name": live["metadata"]["name"], "namespace": live["metadata"]["namespace"]},
        "spec": {"replicas": live["spec"]["replicas"]},
    }


def _label(obj: Mapping[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


_IMMUTABLE_FIELDS = ("data", "binaryData")
"""What the API server refuses to change in an immutable ConfigMap or Secret."""


def _immutable_differs(live: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether `live` is immutable and holds other data than `wanted`: an apply would be
    refused. (Labels and annotations of an immutable object may still change.)"""
    return live.get("immutable") is True and any(
        live.get(name) != wanted.get(name) for name in _IMMUTABLE_FIELDS
    )


def _has_owner(obj: Mapping[str, Any], owner: Owner) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    return any(r.get("uid") == owner.uid for r in refs)


def _mounted_config_maps(cluster: Cluster, owner: Owner) -> frozenset[str]:
    """The ConfigMaps that pods of the owner's ReplicaSets mount, counting only ReplicaSets
    that have or want pods. ReplicaSets carry their pod template's labels, the pod selector."""
    names: set[str] = set()
    for replica_set in cluster.list(
        "apps/v1", "ReplicaSet", owner.namespace, pod_selector(owner.name)
    ):
        spec = replica_set.get("spec") or {}
        status = replica_set.get("status") or {}
        if not (spec.get("replicas", 1) or status.get("replicas")):
            continue
        pod_spec = (spec.get("template") or {}).get("spec") or {}
        for volume in pod_spec.get("volumes") or []:
            config_map = volume.get("configMap") or {}
            if config_map.get("name"):
                names.add(config_map["name"])
    return frozenset(names)


def apply_children(
    cluster: Cluster,
    owner: Owner,
    objects: Sequence[Mapping[str, Any]],
    *,
    field_manager: str,
    served_kinds: Iterable[tuple[str, str]],
) -> ApplyResult:
    """Make the cluster hold exactly `objects` among this owner's children.

    served_kinds: the (apiVersion, kind) pairs of CHILD_KINDS that the API server serves;
    pruning looks only at those.
    """
    applied: list[str] = []
    unchanged: list[str] = []
    after: dict[ObjectKey, Mapping[str, Any]] = {}
    for obj in objects:
        wanted = _owned(obj, owner)
        key = object_key(wanted)
        live = cluster.get(*key)
        if live is not None and _immutable_differs(live, wanted) and _has_owner(live, owner):
            cluster.delete(*key, uid=live["metadata"]["uid"])
            live = None
        if live is not None and covers(live, wanted):
            unchanged.append(_label(wanted))
        else:
            if live is not None and _drops_replicas(live, wanted, field_manager):
                cluster.apply(
                    _replicas_handover(live), field_manager=handover_manager(field_manager)
                )
            live = cluster.apply(wanted, field_manager=field_manager)
            applied.append(_label(wanted))
        after[key] = live
    selector = {
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    pruned: list[str] = []
    mounted: frozenset[str] | None = None  # listed only when a ConfigMap is to go
    for api_version, kind in served_kinds:
        for live in cluster.list(api_version, kind, owner.namespace, selector):
            live = {"apiVersion": api_version, "kind": kind, **live}
            if object_key(live) in after or not _has_owner(live, owner):
                continue
            if (api_version, kind) == ("v1", "ConfigMap"):
                if mounted is None:
                    mounted = _mounted_config_maps(cluster, owner)
                if live["metadata"]["name"] in mounted:
                    continue
            cluster.delete(
                api_version,
                kind,
                owner.namespace,
                live["metadata"]["name"],
                uid=live["metadata"]["uid"],
            )
            pruned.append(_label(live))
    return ApplyResult(tuple(applied), tuple(unchanged), tuple(pruned), after)
