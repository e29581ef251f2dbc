"""Fixtures for end-to-end tests: one real local cluster per session, a fresh namespace per test.

The session's cluster has our chart installed; the operator runs as a local process with a
token of the chart's ServiceAccount, so it can do exactly what the chart's RBAC allows.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from hack.cluster import chart
from hack.cluster.cluster import LocalCluster, local_cluster
from hack.cluster.kube import Kubectl
from hack.cluster.operator_process import OperatorProcess

from .services import RESYNC_SECONDS


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A running cluster with the chart installed (CRD, RBAC, ServiceAccount, operator Deployment)."""
    workdir = tmp_path_factory.mktemp("cluster")
    with local_cluster(workdir) as running:
        chart.install_chart(running)
        yield running


@pytest.fixture(scope="session")
def operator_user(cluster: LocalCluster) -> tuple[Path, str]:
    """A kubeconfig of the chart's operator ServiceAccount, and that user's name."""
    kubeconfig = cluster.workdir / "operator.kubeconfig"
    return kubeconfig, chart.write_operator_kubeconfig(cluster, kubeconfig)


@pytest.fixture(scope="session")
def operator_process(
    cluster: LocalCluster, operator_user: tuple[Path, str]
) -> Iterator[OperatorProcess]:
    """The operator, with the chart's environment and a short resync, running for the session."""
    environment = {
        **chart.operator_environment(cluster),
        "SAS_OPERATOR_RESYNC_SECONDS": str(RESYNC_SECONDS),
        "SAS_OPERATOR_RETRY_SECONDS": str(RESYNC_SECONDS),
    }
    process = OperatorProcess(
        kubeconfig=operator_user[0],
        environment=environment,
        log=cluster.workdir / "logs" / "operator.log",
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
def operator(operator_process: OperatorProcess) -> OperatorProcess:
    """The session's operator, restarted if a previous test left it stopped."""
    if operator_process.process is None or operator_process.process.poll() is not None:
        operator_process.start()
    return operator_process


@pytest.fixture(scope="session")
def admin(cluster: LocalCluster) -> Kubectl:
    """kubectl as cluster admin, no namespace."""
    return cluster.admin


@pytest.fixture
def kube(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[Kubectl]:
    """kubectl as admin in a fresh namespace named after the test; deleted after it."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    namespace = f"{slug[:48].rstrip('-')}-{secrets.token_hex(3)}"
    cluster.admin.run("create", "namespace", namespace)
    yield cluster.admin.in_namespace(namespace)
    cluster.admin.run("delete", "namespace", namespace, "--wait=false")
