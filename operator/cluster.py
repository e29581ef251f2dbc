"""The few Kubernetes API calls the operator makes, behind one small interface.

`Cluster` is the seam: the reconciler is written against it, tests inject an in-memory fake,
and `KubernetesCluster` implements it with the official client's dynamic client.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes import client, config, dynamic
from kubernetes.dynamic.exceptions import NotFoundError

__all__ = ["EVENT_SOURCE", "Cluster", "KubernetesCluster", "label_selector", "object_key"]

EVENT_SOURCE = "sas-operator"

ObjectKey = tuple[str, str, str, str]
"""(apiVersion, kind, namespace, name)."""


def object_key(obj: Mapping[str, Any]) -> ObjectKey:
    """The identity of a namespaced object."""
    metadata = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], metadata.get("namespace", ""), metadata["name"])


def label_selector(labels: Mapping[str, str]) -> str:
    """`labels` as an equality label selector string, keys sorted."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class Cluster(Protocol):
    """What the reconciler may ask of the API server. Objects are plain dicts.

    served: whether the API server serves `kind` in `api_version` (discovery, asked anew).
    get: the object, or None when it does not exist (namespace "" for cluster-scoped kinds).
    list: objects of a kind in a namespace ("": every namespace) carrying every one of
      `labels`.
    apply: server-side apply of `obj` by `field_manager`, conflicts forced; returns the
      resulting object.
    delete: delete the object if its uid is still `uid`, letting garbage collection remove
      what it owns; a missing object is not an error.
    patch_status: JSON merge patch of the object's status subresource (None values remove).
    create_event: post a core/v1 Event about `involved` (apiVersion, kind, metadata name,
      namespace, uid).
    """

    def served(self, api_version: str, kind: str) -> bool: ...

    def get(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None: ...

    def list(
        self, api_version: str, kind: str, namespace: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]: ...

    def apply(self, obj: Mapping[str, Any], *, field_manager: str) -> dict[str, Any]: ...

    def delete(
        self, api_version: str, kind: str, namespace: str, name: str, *, uid: str
    ) -> None: ...

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None: ...

    def create_event(
        self, involved: Mapping[str, Any], *, type: str, reason: str, message: str
    ) -> None: ...


class KubernetesCluster:
    """`Cluster` on the official `kubernetes` client (in-cluster or kubeconfig credentials)."""

    def __init__(self, api_client: Any | None = None) -> None:
        if api_client is None:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config()  # type: ignore[no-untyped-call]
            api_client = client.ApiClient()
        self._dynamic = dynamic.DynamicClient(api_client)  # type: ignore[no-untyped-call]

    def _resource(self, api_version: str, kind: str) -> Any:
        return self._dynamic.resources.get(api_version=api_version, kind=kind)

    def served(self, api_version: str, kind: str) -> bool:
        path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        try:
            listing = self._dynamic.request("get", path)
        except NotFoundError:
            return False
        return any(r.kind == kind for r in listing.resources)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = self._resource(api_version, kind).get(name=name, namespace=namespace or None)
        except NotFoundError:
            return None
        return dict(found.to_dict())

    def list(
        self, api_version: str, kind: str, namespace: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        found = self._resource(api_version, kind).get(
            namespace=namespace or None, label_selector=label_selector(labels)
        )
        return [dict(item) for item in found.to_dict()["items"]]

    def apply(self, obj: Mapping[str, Any], *, field_manager: str) -> dict[str, Any]:
        resource = self._resource(obj["apiVersion"], obj["kind"])
        result = resource.server_side_apply(
            body=dict(obj),
            namespace=obj["metadata"].get("namespace"),
            field_manager=field_manager,
            force_conflicts=True,
        )
        return dict(result.to_dict())

    def delete(self, api_version: str, kind: str, namespace: str, name: str, *, uid: str) -> None:
        body = {"preconditions": {"uid": uid}, "propagationPolicy": "Background"}
        try:
            self._resource(api_version, kind).delete(name=name, namespace=namespace, body=body)
        except NotFoundError:
            return

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        self._resource(api_version, kind).status.patch(
            body={"status": dict(status)},
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
        )

    def create_event(
        self, involved: Mapping[str, Any], *, type: str, reason: str, message: str
    ) -> None:
        metadata = involved["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{metadata['name']}.",
                "namespace": metadata["namespace"],
            },
            "involvedObject": {
                "apiVersion": involved["apiVersion"],
                "kind": involved["kind"],
                "name": metadata["name"],
                "namespace": metadata["namespace"],
                "uid": metadata["uid"],
            },
            "type": type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": EVENT_SOURCE},
            "reportingComponent": EVENT_SOURCE,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self._resource("v1", "Event").create(body=event, namespace=metadata["namespace"])
