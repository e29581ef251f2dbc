"""A service's life on a real cluster: apply, scale, autoscale, roll, drift, delete."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from hack.cluster import nodes
from hack.cluster.kube import Kubectl, KubectlError, wait_for
from hack.cluster.operator_process import OperatorProcess
from sas_operator.apply import APPLIED_HASH_ANNOTATION
from sas_operator.render import CONFIG_FILE, service_url

from .services import (
    RESYNC_SECONDS,
    SAS,
    Manifest,
    children,
    config_map_of,
    controller_uid,
    create_prerequisites,
    pod_ready,
    pods,
    sas,
    wait_ready,
)

pytestmark = pytest.mark.e2e

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("sas-*.yaml"))
DRIFT_TIMEOUT = 3 * RESYNC_SECONDS + 15
H100_NODES = {name for name, product in nodes.GPU_NODES.items() if product == nodes.H100_PRODUCT}
H200_NODES = {name for name, product in nodes.GPU_NODES.items() if product == nodes.H200_PRODUCT}


def test_apply_creates_owned_children_and_ready_pods_on_h100_nodes(
    kube: Kubectl, operator: OperatorProcess
) -> None:
    kube.apply(sas("embed", replicas=2))
    service = wait_ready(kube, "embed")

    uid = service["metadata"]["uid"]
    made = children(kube, "embed")
    kinds = sorted(child["kind"] for child in made)
    assert kinds == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    assert all(controller_uid(child) == uid for child in made), [
        child["metadata"].get("ownerReferences") for child in made
    ]

    running = pods(kube, "embed")
    assert len(running) == 2
    assert all(pod_ready(pod) for pod in running)
    assert {pod["spec"]["nodeName"] for pod in running} <= H100_NODES

    status = service["status"]
    assert status["observedGeneration"] == service["metadata"]["generation"]
    assert status["url"] == service_url("embed", str(kube.namespace))
    assert status["readyReplicas"] == 2


def test_default_image_comes_from_the_chart(kube: Kubectl, operator: OperatorProcess) -> None:
    kube.apply(sas("plain"))
    wait_ready(kube, "plain")
    deployment = kube.get("deployments", "plain")
    assert deployment is not None
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    chart_default = operator.environment["SAS_OPERATOR_DEFAULT_RUNTIME_IMAGE"]
    assert image == chart_default


@pytest.mark.parametrize(("gpu_type", "allowed"), [("H100", H100_NODES), ("H200", H200_NODES)])
def test_pods_land_only_on_nodes_of_the_requested_gpu_type(
    kube: Kubectl, operator: OperatorProcess, gpu_type: str, allowed: set[str]
) -> None:
    kube.apply(sas("typed", replicas=3, resources={"gpus": 2, "gpuType": gpu_type}))
    wait_ready(kube, "typed")
    placed = {pod["spec"]["nodeName"] for pod in pods(kube, "typed")}
    assert placed <= allowed, f"{gpu_type} pods on {placed}"


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_example_becomes_ready(kube: Kubectl, operator: OperatorProcess, example: Path) -> None:
    manifest = yaml.safe_load(example.read_text())
    create_prerequisites(kube, manifest)
    kube.apply_file(example)
    name = manifest["metadata"]["name"]
    service = wait_ready(kube, name)
    assert service["status"]["readyReplicas"] == service["spec"].get("replicas", 1) or (
        "autoscaling" in service["spec"]
    )


def test_kubectl_scale_changes_the_deployment(kube: Kubectl, operator: OperatorProcess) -> None:
    kube.apply(sas("scaled", replicas=1))
    wait_ready(kube, "scaled")

    kube.run("scale", SAS, "scaled", "--replicas=3")

    service = wait_ready(kube, "scaled")
    deployment = kube.get("deployments", "scaled")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 3
    wait_for(
        "3 ready replicas in status",
        lambda: (kube.get(SAS, "scaled") or {}).get("status", {}).get("readyReplicas") == 3,
        60,
    )
    assert service["spec"]["replicas"] == 3


def test_autoscaler_owns_replicas_and_the_operator_does_not_fight_it(
    kube: Kubectl, operator: OperatorProcess
) -> None:
    kube.apply(sas("auto", autoscaling={"minReplicas": 2, "maxReplicas": 4}))
    service = wait_ready(kube, "auto")

    autoscaler = kube.get("horizontalpodautoscalers", "auto")
    assert autoscaler is not None
    assert controller_uid(autoscaler) == service["metadata"]["uid"]
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == "auto"
    assert autoscaler["spec"]["minReplicas"] == 2
    assert autoscaler["spec"]["maxReplicas"] == 4
    # The controller-manager's HPA controller lifts the Deployment to minReplicas by itself.
    wait_for(
        "the HPA to scale the Deployment to minReplicas",
        lambda: (kube.get("deployments", "auto") or {}).get("spec", {}).get("replicas") == 2,
        60,
    )

    # Scale as the HPA would on load; the operator must leave the count alone across resyncs.
    kube.run("scale", "deployment", "auto", "--replicas=3")
    time.sleep(2 * RESYNC_SECONDS + 2)
    deployment = kube.get("deployments", "auto")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 3


def test_turning_autoscaling_on_never_drops_the_pod_count(
    kube: Kubectl, operator: OperatorProcess
) -> None:
    """The operator stops setting replicas once an HPA owns them. The count it set last must
    stay until the HPA moves it, also when a later spec change re-applies the Deployment: an
    apply that drops a field only its own manager held resets it to the default, 1."""
    kube.apply(sas("handover", replicas=3))
    wait_ready(kube, "handover")
    kube.patch(SAS, "handover", {"spec": {"autoscaling": {"minReplicas": 3, "maxReplicas": 4}}})
    wait_for("the HPA", lambda: kube.get("horizontalpodautoscalers", "handover"), 60)
    wait_ready(kube, "handover")
    kube.patch(SAS, "handover", {"spec": {"rateLimit": {"requestsPerSecond": 50}}})

    counts = []
    deadline = time.monotonic() + 20  # past the HPA controller's 15 s sync
    while time.monotonic() < deadline:
        deployment = kube.get("deployments", "handover") or {}
        counts.append(deployment.get("spec", {}).get("replicas"))
        time.sleep(0.25)
    assert set(counts) == {3}, f"the Deployment's replicas read {sorted(set(counts), key=str)}"


def _replica_sets(kube: Kubectl, name: str) -> dict[str, Manifest]:
    return {
        rs["metadata"]["name"]: rs
        for rs in kube.list("replicasets")
        if rs["metadata"]["name"].startswith(f"{name}-")
    }


def _rolled_out(kube: Kubectl, name: str, replicas: int) -> bool:
    """Whether the Deployment's current template runs all its pods, ready, and no other pod."""
    deployment = kube.get("deployments", name) or {}
    status = deployment.get("status", {})
    counts = [status.get(k) for k in ("updatedReplicas", "replicas", "readyReplicas")]
    current = status.get("observedGeneration") == deployment["metadata"]["generation"]
    return current and counts == [replicas] * 3


def _config_maps(kube: Kubectl, name: str) -> list[str]:
    return sorted(o["metadata"]["name"] for o in children(kube, name, ("configmaps",)))


def test_spec_change_rolls_pods_through_a_new_replica_set_and_config_map(
    kube: Kubectl, operator: OperatorProcess
) -> None:
    """A new config is a new immutable ConfigMap that only the new pod template mounts; the old
    one goes once the old ReplicaSet has no pods left."""
    kube.apply(sas("roll", replicas=2, rateLimit={"requestsPerSecond": 200, "burst": 400}))
    wait_ready(kube, "roll")
    old_config = config_map_of(kube, "roll")
    assert old_config["immutable"] is True
    assert _config_maps(kube, "roll") == [old_config["metadata"]["name"]]
    old_sets = _replica_sets(kube, "roll")
    assert len(old_sets) == 1

    kube.patch(SAS, "roll", {"spec": {"rateLimit": {"requestsPerSecond": 100}}})
    wait_ready(kube, "roll")
    wait_for("the rollout to finish", lambda: _rolled_out(kube, "roll", 2), 90)
    new_config = config_map_of(kube, "roll")
    assert new_config["metadata"]["name"] != old_config["metadata"]["name"]
    assert new_config["immutable"] is True
    assert json.loads(new_config["data"][CONFIG_FILE])["rateLimit"]["requestsPerSecond"] == 100
    new_sets = _replica_sets(kube, "roll")
    assert len(new_sets) == 2
    assert set(old_sets) < set(new_sets)
    (new_set,) = set(new_sets) - set(old_sets)
    assert all(
        pod["metadata"]["ownerReferences"][0]["name"] == new_set for pod in pods(kube, "roll")
    )
    (old_set,) = old_sets
    assert new_sets[old_set]["status"]["replicas"] == 0
    wait_for(
        "the old ConfigMap to be pruned",
        lambda: _config_maps(kube, "roll") == [new_config["metadata"]["name"]],
        DRIFT_TIMEOUT,
    )


def test_a_stuck_rollout_keeps_the_config_map_the_old_pods_read(
    kube: Kubectl, operator: OperatorProcess
) -> None:
    """New pods that cannot schedule leave the old ReplicaSet's pods running (maxUnavailable 0),
    and they and their restarts still need the old config; once the rollout can finish, the old
    ConfigMap goes."""
    kube.apply(sas("stuck", replicas=2, rateLimit={"requestsPerSecond": 200, "burst": 400}))
    wait_ready(kube, "stuck")
    old_config = config_map_of(kube, "stuck")["metadata"]["name"]
    (old_set,) = _replica_sets(kube, "stuck")

    kube.patch(
        SAS,
        "stuck",
        {
            "spec": {
                "rateLimit": {"requestsPerSecond": 100},
                "scheduling": {"nodeSelector": {"pool": "nowhere"}},
            }
        },
    )
    wait_for("a second ReplicaSet", lambda: len(_replica_sets(kube, "stuck")) == 2, 60)
    new_config = config_map_of(kube, "stuck")["metadata"]["name"]
    assert new_config != old_config
    time.sleep(2 * RESYNC_SECONDS + 2)
    assert _config_maps(kube, "stuck") == sorted([old_config, new_config])
    assert _replica_sets(kube, "stuck")[old_set]["status"]["replicas"] == 2

    kube.patch(SAS, "stuck", {"spec": {"scheduling": {"nodeSelector": None}}})
    wait_for("the rollout to finish", lambda: _rolled_out(kube, "stuck", 2), 90)
    assert _replica_sets(kube, "stuck")[old_set]["status"]["replicas"] == 0
    assert config_map_of(kube, "stuck")["metadata"]["name"] == new_config
    wait_for(
        "the old ConfigMap to be pruned",
        lambda: _config_maps(kube, "stuck") == [new_config],
        DRIFT_TIMEOUT,
    )


def test_drift_is_corrected_within_the_resync_interval(
    kube: Kubectl, operator: OperatorProcess
) -> None:
    kube.apply(sas("drift", replicas=1))
    wait_ready(kube, "drift")
    config_map = config_map_of(kube, "drift")
    config_name = config_map["metadata"]["name"]
    applied_hash = config_map["metadata"]["annotations"][APPLIED_HASH_ANNOTATION]
    with pytest.raises(KubectlError, match="immutable"):
        kube.patch("configmaps", config_name, {"data": {CONFIG_FILE: "{}"}})

    # What can drift on an immutable ConfigMap is its metadata; the operator's apply over it,
    # data unchanged, is one the API server accepts.
    kube.patch(
        "configmaps", config_name, {"metadata": {"annotations": {APPLIED_HASH_ANNOTATION: "x"}}}
    )
    kube.delete("services", "drift")
    kube.run("scale", "deployment", "drift", "--replicas=4")

    wait_for(
        "the ConfigMap's annotation to be restored",
        lambda: (
            ((kube.get("configmaps", config_name) or {}).get("metadata") or {})
            .get("annotations", {})
            .get(APPLIED_HASH_ANNOTATION)
            == applied_hash
        ),
        DRIFT_TIMEOUT,
    )
    wait_for("the Service to be recreated", lambda: kube.get("services", "drift"), DRIFT_TIMEOUT)
    wait_for(
        "the Deployment's replicas to be restored",
        lambda: (kube.get("deployments", "drift") or {}).get("spec", {}).get("replicas") == 1,
        DRIFT_TIMEOUT,
    )
    kube.delete("configmaps", config_name)
    wait_for(
        "the ConfigMap to be recreated",
        lambda: kube.get("configmaps", config_name),
        DRIFT_TIMEOUT,
    )


def test_deletion_garbage_collects_everything(kube: Kubectl, operator: OperatorProcess) -> None:
    kube.apply(sas("gone", replicas=2))
    wait_ready(kube, "gone")
    assert children(kube, "gone")

    kube.run("delete", SAS, "gone", "--timeout=60s")

    wait_for("every child to be collected", lambda: not children(kube, "gone"), 60)
    wait_for("every pod to be gone", lambda: not pods(kube, "gone"), 60)
    assert kube.get(SAS, "gone") is None
    terminating = [
        f"{obj['kind']}/{obj['metadata']['name']}"
        for obj in kube.list("all")
        if obj["metadata"].get("deletionTimestamp")
    ]
    assert terminating == []
