"""Pod Security admission admits our pods; the operator works with exactly the chart's RBAC."""

from __future__ import annotations

from pathlib import Path

import pytest

from hack.cluster.kube import Kubectl, KubectlError
from hack.cluster.operator_process import OperatorProcess

from .services import children, pod_ready, pods, sas, wait_ready

pytestmark = pytest.mark.e2e


def test_restricted_namespace_admits_our_pods(kube: Kubectl, operator: OperatorProcess) -> None:
    kube.run(
        "label", "namespace", str(kube.namespace),
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=v1.32",
    )  # fmt: skip
    kube.apply(sas("hardened", replicas=2))
    wait_ready(kube, "hardened")

    admitted = pods(kube, "hardened")
    assert len(admitted) == 2
    assert all(pod_ready(pod) for pod in admitted)
    refusals = [
        event["message"] for event in kube.list("events") if event.get("reason") == "FailedCreate"
    ]
    assert refusals == []


def _can(kubectl: Kubectl, verb: str, resource: str) -> bool:
    """`kubectl auth can-i VERB RESOURCE -A` (it exits 1 when the answer is no)."""
    try:
        return kubectl.run("auth", "can-i", verb, resource, "-A").strip() == "yes"
    except KubectlError:
        return False


def test_operator_identity_is_the_chart_service_account(operator_user: tuple[Path, str]) -> None:
    kubeconfig, user = operator_user
    as_operator = Kubectl(kubeconfig)
    assert as_operator.run("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}") == user
    # Least privilege: what the chart grants and no more.
    assert _can(as_operator, "patch", "deployments.apps")
    denied = [
        (verb, resource)
        for verb, resource in [
            ("create", "pods"),
            ("list", "secrets"),
            ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
            ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ]
        if _can(as_operator, verb, resource)
    ]
    assert denied == []


def test_a_fully_featured_service_needs_nothing_beyond_the_chart_rbac(
    kube: Kubectl, operator: OperatorProcess
) -> None:
    kube.run("create", "secret", "generic", "api-token", "--from-literal=token=s3cret")
    log_offset = operator.log.stat().st_size
    kube.apply(
        sas(
            "everything",
            autoscaling={"minReplicas": 2, "maxReplicas": 4},
            security={
                "allowFrom": [{"namespaceSelector": {"matchLabels": {"team": "search"}}}],
                "authSecretRef": {"name": "api-token"},
            },
        )
    )
    wait_ready(kube, "everything")

    kinds = sorted(child["kind"] for child in children(kube, "everything"))
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    with operator.log.open() as log:
        log.seek(log_offset)
        forbidden = [line for line in log if "forbidden" in line.lower()]
    assert forbidden == []
