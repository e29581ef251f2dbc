"""The chart on a real API server: a namespaced install serves only its namespaces under its
Roles, `helm upgrade` rolls the settings, `helm uninstall` keeps the CRD and the services.

The cluster-wide install is exercised by every test under tests/e2e (their session cluster).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hack.cluster import chart
from hack.cluster.cluster import LocalCluster, local_cluster
from hack.cluster.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e

CRD = "customresourcedefinitions.apiextensions.k8s.io"
SAS_CRD = "sparseattentionservices.sparseattention.io"
WATCHED, UNWATCHED = "ml-serving", "ml-other"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A cluster with the chart installed for one watched namespace only."""
    with local_cluster(tmp_path_factory.mktemp("chart-cluster")) as running:
        for namespace in (WATCHED, UNWATCHED):
            running.admin.run("create", "namespace", namespace)
        chart.install_chart(running, f"operator.watchNamespaces={{{WATCHED}}}")
        yield running


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster) -> Iterator[OperatorProcess]:
    """The operator with the chart's environment, as the chart's ServiceAccount."""
    kubeconfig = cluster.workdir / "operator.kubeconfig"
    chart.write_operator_kubeconfig(cluster, kubeconfig)
    process = OperatorProcess(
        kubeconfig=kubeconfig,
        environment=chart.operator_environment(cluster),
        log=cluster.workdir / "logs" / "chart-operator.log",
    )
    process.start()
    yield process
    process.stop()


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "sparseattention.io/v1alpha1",
        "kind": "SparseAttentionService",
        "metadata": {"name": name},
        "spec": {"resources": {"gpus": 1, "gpuType": "H100"}},
    }


def wait_for_deployment(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = cluster.admin.in_namespace(namespace).get("deployments", name)
        if found is not None:
            return found
        time.sleep(0.5)
    pytest.fail(f"no Deployment {namespace}/{name} after 60 s")


def forbidden_lines(log: Path) -> list[str]:
    return [line[:300] for line in log.read_text().splitlines() if "forbidden" in line.lower()]


def test_namespaced_install_serves_only_its_namespaces_under_its_roles(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    assert cluster.admin.list("clusterrolebindings", "app.kubernetes.io/instance=sas")
    roles = cluster.admin.in_namespace(WATCHED).list("roles", "app.kubernetes.io/instance=sas")
    assert len(roles) == 1
    assert cluster.admin.in_namespace(UNWATCHED).list("roles") == []

    for namespace in (WATCHED, UNWATCHED):
        cluster.admin.in_namespace(namespace).apply(service("minilm"))
    deployment = wait_for_deployment(cluster, WATCHED, "minilm")
    assert deployment["metadata"]["ownerReferences"][0]["kind"] == "SparseAttentionService"
    time.sleep(3)
    assert cluster.admin.in_namespace(UNWATCHED).get("deployments", "minilm") is None
    assert forbidden_lines(operator.log) == []


def test_upgrade_rolls_settings_and_uninstall_keeps_crd_and_services(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    chart.helm(
        cluster,
        "upgrade", "sas", str(chart.CHART), "--namespace", chart.NAMESPACE, "--reuse-values",
        "--set", "operator.logFormat=plain", "--wait", "--timeout", "120s",
    )  # fmt: skip
    assert chart.operator_environment(cluster)["SAS_OPERATOR_LOG_FORMAT"] == "plain"
    crd = cluster.admin.get(CRD, SAS_CRD)
    assert crd is not None
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    operator.stop()
    chart.helm(cluster, "uninstall", "sas", "--namespace", chart.NAMESPACE, "--wait")
    assert cluster.admin.get(CRD, SAS_CRD) is not None
    assert cluster.admin.in_namespace(WATCHED).get("sparseattentionservices", "minilm") is not None
    assert cluster.admin.in_namespace(chart.NAMESPACE).list("deployments") == []
    assert cluster.admin.list("clusterroles", "app.kubernetes.io/instance=sas") == []
