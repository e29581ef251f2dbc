"""The chart renders valid, hardened manifests for the default values and a matrix of value sets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from sas_operator.render import MANAGED_BY
from sas_operator.settings import OperatorSettings
from sas_runtime.metrics import RuntimeMetrics

from .tools import (
    CHART,
    NAMESPACE,
    Manifest,
    find,
    prometheus_operator_crds,
    render,
    run_helm,
    validate_strict,
)

MONITORING_ON = {
    "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "prom"}, "for": "5m"},
    "grafanaDashboard": {"enabled": True, "folder": "Inference"},
}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"operator": {"watchNamespaces": ["ml-serving", "ml-staging"]}},
    "monitoring": {"monitoring": MONITORING_ON},
    "network-policy": {
        "networkPolicy": {
            "enabled": True,
            "metricsNamespaceSelector": {"kubernetes.io/metadata.name": "monitoring"},
        }
    },
    "crds-and-peering-off": {"crds": {"enabled": False}, "peering": {"enabled": False}},
    "crds-not-kept": {"crds": {"keep": False}},
    "existing-identity": {
        "serviceAccount": {"create": False, "name": "platform-ops"},
        "rbac": {"create": False},
    },
    "pinned-and-placed": {
        "image": {
            "repository": "registry.example.com:5000/ml/sas-operator",
            "digest": "sha256:" + "4f" * 32,
            "pullPolicy": "IfNotPresent",
        },
        "imagePullSecrets": [{"name": "regcred"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "control", "effect": "NoSchedule"}
        ],
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"example.com/owner": "ml-platform"},
        "podLabels": {"team": "ml-platform"},
        "operator": {
            "logFormat": "plain",
            "logLevel": "debug",
            "defaultRuntimeImage": "registry.example.com/ml/sas-runtime:0.1.0",
            "runtimeImagePullPolicy": "Always",
            "resyncSeconds": 30,
            "retrySeconds": 7.5,
            "gpuProductLabel": "example.com/gpu",
            "gpuProducts": {"H100": ["H100-SXM"], "H200": ["H200-SXM", "H200-NVL"]},
            "healthPort": 18080,
            "metricsPort": 19090,
        },
    },
    "long-names": {"fullnameOverride": "f" * 80},
    "everything-on-namespaced": {
        "operator": {"watchNamespaces": ["ml"]},
        "monitoring": MONITORING_ON,
        "networkPolicy": {"enabled": True},
        "peering": {"name": "default"},
    },
}


def operator_deployment(manifests: list[Manifest]) -> Manifest:
    (deployment,) = find(manifests, "Deployment")
    return deployment


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint_strict_passes(values: dict[str, Any], tmp_path: Path) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = run_helm(
        "lint", "--strict", str(CHART), "--namespace", NAMESPACE, "--values", str(values_file)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_manifest_is_valid_for_kubernetes_1_32(values: dict[str, Any]) -> None:
    manifests = render(values)
    assert manifests
    assert validate_strict(manifests, prometheus_operator_crds()) == []


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_operator_pod_meets_pod_security_restricted(values: dict[str, Any]) -> None:
    pod = operator_deployment(render(values))["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not {"hostNetwork", "hostPID", "hostIPC"} & pod.keys()
    assert all(set(volume) == {"name", "emptyDir"} for volume in pod["volumes"])
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["privileged"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert all("hostPort" not in port for port in container["ports"])
        assert {"cpu", "memory"} <= container["resources"]["limits"].keys()


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_one_operator_replica_with_probes_on_the_health_port(values: dict[str, Any]) -> None:
    deployment = operator_deployment(render(values))
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    health_port = values.get("operator", {}).get("healthPort", 8080)
    assert {"name": "health", "containerPort": health_port, "protocol": "TCP"} in container["ports"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def operator_env(manifests: list[Manifest]) -> dict[str, str]:
    (container,) = operator_deployment(manifests)["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


def test_settings_reach_the_operator_as_environment() -> None:
    manifests = render(VALUE_SETS["pinned-and-placed"])
    settings = OperatorSettings.from_env(operator_env(manifests))
    assert settings.namespaces == ()
    assert (settings.log_format, settings.log_level) == ("plain", "debug")
    assert settings.default_image == "registry.example.com/ml/sas-runtime:0.1.0"
    assert settings.image_pull_policy == "Always"
    assert settings.resync_seconds == 30
    assert settings.retry_seconds == 7.5
    assert settings.gpu_product_label == "example.com/gpu"
    assert settings.gpu_products == {"H100": ("H100-SXM",), "H200": ("H200-SXM", "H200-NVL")}
    assert (settings.health_port, settings.metrics_port) == (18080, 19090)
    (container,) = operator_deployment(manifests)["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com:5000/ml/sas-operator@sha256:" + "4f" * 32
    namespaced = OperatorSettings.from_env(operator_env(render(VALUE_SETS["namespaced"])))
    assert namespaced.namespaces == ("ml-serving", "ml-staging")
    standalone = OperatorSettings.from_env(operator_env(render(VALUE_SETS["crds-and-peering-off"])))
    assert standalone.peering is None


def test_default_settings_agree_with_the_operator_defaults() -> None:
    settings = OperatorSettings.from_env(operator_env(render()))
    defaults = OperatorSettings()
    assert (settings.log_format, settings.log_level) == (defaults.log_format, defaults.log_level)
    assert settings.resync_seconds == defaults.resync_seconds
    assert settings.retry_seconds == defaults.retry_seconds
    assert settings.gpu_product_label == defaults.gpu_product_label
    assert settings.gpu_products == defaults.gpu_products
    assert (settings.health_port, settings.metrics_port) == (
        defaults.health_port,
        defaults.metrics_port,
    )


def test_operator_pods_carry_the_label_runtime_network_policies_admit() -> None:
    for values in VALUE_SETS.values():
        pod_labels = operator_deployment(render(values))["spec"]["template"]["metadata"]["labels"]
        assert pod_labels["app.kubernetes.io/name"] == MANAGED_BY


def test_defaults_name_the_chart_version_images_and_peering_object() -> None:
    manifests = render()
    settings = OperatorSettings.from_env(operator_env(manifests))
    (container,) = operator_deployment(manifests)["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/sparse-attention-operator/operator:0.1.0"
    assert settings.default_image == "ghcr.io/sparse-attention-operator/runtime:0.1.0"
    (peering,) = find(manifests, "ClusterKopfPeering")
    assert settings.peering == peering["metadata"]["name"]
    assert settings.operator_namespace is None  # filled by the downward API in the pod
    assert "POD_NAMESPACE" in {item["name"] for item in container["env"]}


def test_optional_objects_are_off_by_default_and_network_policy_on() -> None:
    kinds = {m["kind"] for m in render()}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "Role", "ConfigMap"}
    assert {"Deployment", "NetworkPolicy"} <= kinds
    assert "NetworkPolicy" not in {m["kind"] for m in render({"networkPolicy": {"enabled": False}})}


def test_network_policy_admits_only_the_metrics_port() -> None:
    (policy,) = find(render(), "NetworkPolicy")
    (deployment,) = find(render(), "Deployment")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    (policy,) = find(render(VALUE_SETS["network-policy"]), "NetworkPolicy")
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


def test_monitoring_objects_render_when_switched_on() -> None:
    manifests = render(VALUE_SETS["monitoring"])
    (monitor,) = find(manifests, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s"}
    ]
    (service,) = find(manifests, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )

    (rule,) = find(manifests, "PrometheusRule")
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == {
        "SASP99LatencyHigh",
        "SASSparseFallbackActive",
        "SASPodsNotReady",
        "SASQueueSaturated",
    }
    assert "> 0.5" in alerts["SASP99LatencyHigh"]["expr"]
    assert all(alert["for"] == "5m" for alert in alerts.values())

    (dashboard,) = find(manifests, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"]["grafana_folder"] == "Inference"


def test_alerts_and_dashboard_use_metrics_the_runtime_exports() -> None:
    registry = CollectorRegistry()
    RuntimeMetrics(registry)
    exported = {
        sample_name
        for metric in registry.collect()
        for sample_name in _sample_names(metric.name, metric.type)
    }
    manifests = render(VALUE_SETS["monitoring"])
    (rule,) = find(manifests, "PrometheusRule")
    (dashboard,) = find(manifests, "ConfigMap")
    queries = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]
    queries.append(next(iter(dashboard["data"].values())))
    used = {name for query in queries for name in re.findall(r"\bsas_[a-z_]+", query)}
    assert used
    assert used <= exported, used - exported


def _sample_names(name: str, metric_type: str) -> set[str]:
    if metric_type == "counter":
        return {f"{name}_total"}
    if metric_type == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return {name}


def test_namespaced_install_grants_roles_only_in_watched_namespaces() -> None:
    manifests = render(VALUE_SETS["namespaced"])
    roles = find(manifests, "Role")
    assert {role["metadata"]["namespace"] for role in roles} == {"ml-serving", "ml-staging"}
    assert {b["metadata"]["namespace"] for b in find(manifests, "RoleBinding")} == {
        "ml-serving",
        "ml-staging",
    }
    (cluster_role,) = find(manifests, "ClusterRole")
    cluster_resources = {res for rule in cluster_role["rules"] for res in rule["resources"]}
    assert cluster_resources == {"customresourcedefinitions", "namespaces"}
    peerings = find(manifests, "KopfPeering")
    assert {p["metadata"]["namespace"] for p in peerings} == {"ml-serving", "ml-staging"}
    assert not find(manifests, "ClusterKopfPeering")


def test_names_fit_kubernetes_limits() -> None:
    manifests = render(VALUE_SETS["long-names"])
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        limit = 63 if manifest["kind"] in {"Service", "Deployment"} else 253
        assert len(name) <= limit, (manifest["kind"], name)
        for value in manifest["metadata"].get("labels", {}).values():
            assert len(value) <= 63
    assert operator_deployment(manifests)["metadata"]["name"] == "f" * 63
