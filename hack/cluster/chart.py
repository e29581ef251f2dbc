"""Install our Helm chart into a local cluster and act as the operator ServiceAccount it creates."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from hack.cluster import tools
from hack.cluster.cluster import LocalCluster
from hack.cluster.kube import CommandFailed

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "sparse-attention-operator"
RELEASE = "sas"
NAMESPACE = "sas-system"
INSTANCE_LABEL = "app.kubernetes.io/instance"


def helm(cluster: LocalCluster, *args: str) -> str:
    """Run helm against `cluster` as admin, with helm's own state kept in the cluster's workdir."""
    state = cluster.workdir / "helm"
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.admin_kubeconfig),
        "HELM_CACHE_HOME": str(state / "cache"),
        "HELM_CONFIG_HOME": str(state / "config"),
        "HELM_DATA_HOME": str(state / "data"),
    }
    result = subprocess.run(
        [str(tools.HELM.path), *args], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise CommandFailed(result.returncode, ["helm", *args], result.stdout, result.stderr)
    return result.stdout


def install_chart(cluster: LocalCluster, *set_values: str) -> None:
    """`helm install` the chart (CRD, RBAC, ServiceAccount, operator Deployment) and wait for it."""
    extra = [arg for value in set_values for arg in ("--set", value)]
    helm(
        cluster,
        "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
        "--wait", "--timeout", "120s", *extra,
    )  # fmt: skip


def _operator_deployment(cluster: LocalCluster) -> dict[str, Any]:
    listed = cluster.admin.in_namespace(NAMESPACE).list(
        "deployments", f"{INSTANCE_LABEL}={RELEASE}"
    )
    if len(listed) != 1:
        raise RuntimeError(f"expected one operator Deployment in {NAMESPACE}, found {len(listed)}")
    deployment: dict[str, Any] = listed[0]
    return deployment


def operator_environment(cluster: LocalCluster) -> dict[str, str]:
    """The operator container's environment exactly as the chart rendered it (downward API resolved)."""
    container = _operator_deployment(cluster)["spec"]["template"]["spec"]["containers"][0]
    environment: dict[str, str] = {}
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = variable["value"]
        elif variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == (
            "metadata.namespace"
        ):
            environment[variable["name"]] = NAMESPACE
    return environment


def write_operator_kubeconfig(cluster: LocalCluster, path: Path) -> str:
    """A kubeconfig holding a token of the chart's operator ServiceAccount; returns its user name.

    Whatever the operator does with it is allowed by exactly the chart's RBAC, nothing more.
    """
    spec = _operator_deployment(cluster)["spec"]["template"]["spec"]
    account = spec["serviceAccountName"]
    token = cluster.admin.run(
        "create", "token", account, "--namespace", NAMESPACE, "--duration", "24h"
    ).strip()
    user = f"system:serviceaccount:{NAMESPACE}:{account}"
    cluster.write_kubeconfig(path, user, token)
    return user
