"""A service's life on a real cluster: apply, scale, autoscale, roll, drift, delete."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from hack.cluster import nodes
from hack.cluster.kube import Kubectl, wait_for
from hack.cluster.operator_process import OperatorProcess
from sas_operator.render import CHECKSUM_ANNOTATION, CONFIG_FILE, service_url

from .services import (
    RESYNC_SECONDS,
    SAS,
    children,
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


def _replica_sets(kube: Kubectl, name: str) -> list[str]:
    return sorted(
        rs["metadata"]["name"]
        for rs in kube.list("replicasets")
        if rs["metadata"]["name"].startswith(f"{name}-")
    )


def test_spec_change_rolls_pods_through_a_new_replica_set(
    kube: Kubectl, operator: OperatorProcess
) -> None:
    kube.apply(sas("roll", replicas=2, rateLimit={"requestsPerSecond": 200, "burst": 400}))
    wait_ready(kube, "roll")
    before = kube.get("deployments", "roll")
    assert before is not None
    old_checksum = before["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]
    old_sets = _replica_sets(kube, "roll")
    assert len(old_sets) == 1

    kube.patch(SAS, "roll", {"spec": {"rateLimit": {"requestsPerSecond": 100}}})
    wait_ready(kube, "roll")

    def rolled() -> bool:
        deployment = kube.get("deployments", "roll") or {}
        status = deployment.get("status", {})
        counts = [status.get(k) for k in ("updatedReplicas", "replicas", "readyReplicas")]
        current = status.get("observedGeneration") == deployment["metadata"]["generation"]
        return current and counts == [2, 2, 2]

    wait_for("the rollout to finish", rolled, 90)
    after = kube.get("deployments", "roll")
    assert after is not None
    new_checksum = after["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]
    assert new_checksum != old_checksum
    new_sets = _replica_sets(kube, "roll")
    assert len(new_sets) == 2
    assert set(old_sets) < set(new_sets)
    (new_set,) = set(new_sets) - set(old_sets)
    assert all(
        pod["metadata"]["ownerReferences"][0]["name"] == new_set for pod in pods(kube, "roll")
    )
    config_map = kube.get("configmaps", "roll")
    assert config_map is not None
    assert json.loads(config_map["data"][CONFIG_FILE])["rateLimit"]["requestsPerSecond"] == 100


def test_drift_is_corrected_within_the_resync_interval(
    kube: Kubectl, operator: OperatorProcess
) -> None:
    kube.apply(sas("drift", replicas=1))
    wait_ready(kube, "drift")
    config_map = kube.get("configmaps", "drift")
    assert config_map is not None
    wanted_config = config_map["data"][CONFIG_FILE]

    kube.patch("configmaps", "drift", {"data": {CONFIG_FILE: "{}"}})
    kube.delete("services", "drift")
    kube.run("scale", "deployment", "drift", "--replicas=4")

    wait_for(
        "the ConfigMap to be restored",
        lambda: (
            (kube.get("configmaps", "drift") or {}).get("data", {}).get(CONFIG_FILE)
            == wanted_config
        ),
        DRIFT_TIMEOUT,
    )
    wait_for("the Service to be recreated", lambda: kube.get("services", "drift"), DRIFT_TIMEOUT)
    wait_for(
        "the Deployment's replicas to be restored",
        lambda: (kube.get("deployments", "drift") or {}).get("spec", {}).get("replicas") == 1,
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
