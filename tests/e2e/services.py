"""Build SparseAttentionService manifests and read back what the operator made of them."""

from __future__ import annotations

import json
from typing import Any

from hack.cluster.kube import Kubectl, KubectlError, WaitTimeout, wait_for
from sas_operator.cluster import label_selector
from sas_operator.render import child_labels, mounted_config_map
from sas_operator.spec import GROUP, KIND, PLURAL, VERSION
from sas_operator.status import selector_string

SAS = f"{PLURAL}.{GROUP}"
RESYNC_SECONDS = 5
"""The operator's resync interval in these tests: drift must be corrected within it."""
CHILD_KINDS = (
    "serviceaccounts",
    "configmaps",
    "deployments.apps",
    "services",
    "poddisruptionbudgets.policy",
    "horizontalpodautoscalers.autoscaling",
    "networkpolicies.networking.k8s.io",
)
SERVICE_MONITORS = "servicemonitors.monitoring.coreos.com"
CPU_ONLY = {"resources": {"gpus": 0, "cpu": "1", "memory": "1Gi"}, "server": {"device": "cpu"}}
"""A spec fragment for a service that needs no GPU."""

Manifest = dict[str, Any]


def sas(name: str, **spec: Any) -> Manifest:
    """A SparseAttentionService manifest; unnamed spec fields take the CRD's defaults."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


def condition(obj: Manifest, kind: str) -> Manifest | None:
    """The status condition of this type, if any. A new object's status may hold `conditions:
    null` for a moment (a CRD just applied), which reads as none."""
    conditions: list[Manifest] = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), None)


def is_ready(obj: Manifest) -> bool:
    """Whether the SAS's status is Ready for its current generation."""
    ready = condition(obj, "Ready")
    current = obj.get("status", {}).get("observedGeneration") == obj["metadata"]["generation"]
    return current and ready is not None and ready["status"] == "True"


def current_and_ready(kube: Kubectl, name: str) -> Manifest | None:
    """The SAS when its status is Ready for its current generation, else None."""
    obj = kube.get(SAS, name)
    return obj if obj is not None and is_ready(obj) else None


def wait_ready(kube: Kubectl, name: str, timeout: float = 90) -> Manifest:
    """Wait until the SAS reports Ready for its current generation; return it.

    On a timeout the error carries the last status seen, which says why.
    """
    try:
        return wait_for(
            f"SparseAttentionService {kube.namespace}/{name} Ready",
            lambda: current_and_ready(kube, name),
            timeout,
        )
    except WaitTimeout as timeout_error:
        last = (kube.get(SAS, name) or {}).get("status")
        raise WaitTimeout(f"{timeout_error}; last status: {json.dumps(last)}") from None


def children(kube: Kubectl, name: str, kinds: tuple[str, ...] = CHILD_KINDS) -> list[Manifest]:
    """Every object of the child kinds carrying this service's child labels."""
    selector = label_selector(child_labels(name))
    found: list[Manifest] = []
    for kind in kinds:
        found += kube.list(kind, selector)
    return found


def config_map_of(kube: Kubectl, name: str) -> Manifest:
    """The ConfigMap the service's Deployment mounts its config from (named after its content)."""
    deployment = kube.get("deployments", name)
    assert deployment is not None, f"no Deployment {name}"
    config_name = mounted_config_map(deployment)
    config_map = kube.get("configmaps", config_name)
    assert config_map is not None, f"the Deployment mounts ConfigMap {config_name}, which is gone"
    return config_map


def service_monitors(kube: Kubectl, name: str) -> list[Manifest] | None:
    """This service's ServiceMonitors, or None while the cluster does not serve the kind."""
    try:
        return children(kube, name, (SERVICE_MONITORS,))
    except KubectlError as error:
        if "the server doesn't have a resource type" in str(error):
            return None
        raise


def pods(kube: Kubectl, name: str) -> list[Manifest]:
    """The service's pods, by the Deployment's selector."""
    return kube.list("pods", selector_string(name))


def controller_uid(obj: Manifest) -> str | None:
    """UID of the object's controlling owner, if it has one."""
    for reference in obj["metadata"].get("ownerReferences", []):
        if reference.get("controller"):
            uid: str = reference["uid"]
            return uid
    return None


def pod_ready(pod: Manifest) -> bool:
    ready = condition(pod, "Ready")
    running = (pod.get("status") or {}).get("phase") == "Running"
    return running and ready is not None and ready["status"] == "True"


def resource_versions(objects: list[Manifest]) -> dict[str, str]:
    """kind/name -> resourceVersion, to tell whether anything was written."""
    return {
        f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["resourceVersion"] for o in objects
    }


def create_prerequisites(kube: Kubectl, manifest: Manifest) -> None:
    """What an example's comments ask for first: its token Secret and its model claim (bound to
    a hostPath volume, as kwok's pods mount nothing)."""
    spec = manifest["spec"]
    secret = spec.get("security", {}).get("authSecretRef")
    if secret is not None:
        token = f"--from-literal={secret.get('key', 'token')}=example-token"
        kube.run("create", "secret", "generic", secret["name"], token)
    claim = spec.get("model", {}).get("pvc")
    if claim is not None:
        volume = f"{kube.namespace}-{claim}"[:253]
        kube.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": volume},
                "spec": {
                    "capacity": {"storage": "10Gi"},
                    "accessModes": ["ReadOnlyMany"],
                    "storageClassName": "",
                    "hostPath": {"path": spec["model"]["path"]},
                    "claimRef": {"namespace": kube.namespace, "name": claim},
                },
            },
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim},
                "spec": {
                    "accessModes": ["ReadOnlyMany"],
                    "storageClassName": "",
                    "volumeName": volume,
                    "resources": {"requests": {"storage": "10Gi"}},
                },
            },
        )
