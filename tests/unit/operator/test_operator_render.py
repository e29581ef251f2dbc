"""Rendering over a matrix of specs: which children, and how each pod is hardened."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import kubernetes_validate
import pytest

from sas_operator.render import (
    CONFIG_FILE,
    UnrenderableSpec,
    child_labels,
    config_map_name,
    render,
)
from sas_operator.settings import OperatorSettings
from sas_operator.spec import NAME_MAX_LENGTH, OPERATOR_LABEL_KEYS, SparseAttentionServiceSpec
from sas_runtime.config import RuntimeConfig

SETTINGS = OperatorSettings(operator_namespace="sas-system")

MATRIX: dict[str, tuple[dict[str, Any], bool, list[str]]] = {
    "defaults": (
        {},
        False,
        ["ServiceAccount", "ConfigMap", "Deployment", "Service"],
    ),
    "defaults with prometheus": (
        {},
        True,
        ["ServiceAccount", "ConfigMap", "Deployment", "Service", "ServiceMonitor"],
    ),
    "monitoring disabled": (
        {"monitoring": {"serviceMonitor": {"enabled": False}}},
        True,
        ["ServiceAccount", "ConfigMap", "Deployment", "Service"],
    ),
    "replicated": (
        {"replicas": 3},
        False,
        ["ServiceAccount", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget"],
    ),
    "autoscaled": (
        {"autoscaling": {"minReplicas": 2, "maxReplicas": 6}},
        False,
        [
            "ServiceAccount",
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
        ],
    ),
    "locked down": (
        {
            "security": {
                "allowFrom": [{"namespaceSelector": {"matchLabels": {"team": "search"}}}],
                "authSecretRef": {"name": "sas-token", "key": "bearer"},
            }
        },
        False,
        ["ServiceAccount", "ConfigMap", "Deployment", "Service", "NetworkPolicy"],
    ),
    "model on a claim, cpu only": (
        {
            "model": {"source": "path", "path": "/models/bge", "pvc": "models"},
            "resources": {"gpus": 0},
            "server": {"device": "cpu"},
        },
        False,
        ["ServiceAccount", "ConfigMap", "Deployment", "Service"],
    ),
}


def _render(spec: dict[str, Any], monitor: bool = False) -> list[dict[str, Any]]:
    return render(
        "minilm",
        "ml",
        SparseAttentionServiceSpec.model_validate(spec),
        SETTINGS,
        service_monitor_served=monitor,
    )


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_matrix_renders_the_wanted_children_valid_for_kubernetes(case: str) -> None:
    spec, monitor, kinds = MATRIX[case]
    objects = _render(spec, monitor)
    assert [o["kind"] for o in objects] == kinds
    for obj in objects:
        assert obj["metadata"]["namespace"] == "ml"
        assert child_labels("minilm").items() <= obj["metadata"]["labels"].items()
        if obj["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(obj, "1.32", strict=True)
    assert objects == _render(spec, monitor), "rendering must be deterministic"


def test_pod_is_hardened_to_the_restricted_standard() -> None:
    pod = _by_kind(_render({}))["Deployment"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    assert writable == {"/tmp", "/scratch", "/dev/shm"}
    assert {m["name"] for m in container["volumeMounts"] if not m.get("readOnly")} <= empty_dirs
    assert container["command"] == [
        "python",
        "-m",
        "sas_runtime",
        "serve",
        "--config",
        "/etc/sas/config.json",
    ]


def test_gpu_limits_node_selection_and_tolerations() -> None:
    spec = {
        "resources": {"gpus": 2, "gpuType": "H200"},
        "scheduling": {
            "nodeSelector": {"pool": "inference"},
            "tolerations": [{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}],
            "runtimeClassName": "nvidia",
        },
    }
    pod = _by_kind(_render(spec))["Deployment"]["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "2"
    assert resources["requests"]["nvidia.com/gpu"] == "2"
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert term["matchExpressions"] == [
        {
            "key": "nvidia.com/gpu.product",
            "operator": "In",
            "values": ["NVIDIA-H200", "NVIDIA-H200-NVL"],
        }
    ]
    assert pod["nodeSelector"] == {"pool": "inference"}
    assert pod["runtimeClassName"] == "nvidia"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"


def test_cpu_only_pods_ask_for_no_gpu() -> None:
    pod = _by_kind(_render({"resources": {"gpus": 0}}))["Deployment"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert "affinity" not in pod
    assert "tolerations" not in pod


def test_unknown_gpu_type_cannot_be_rendered() -> None:
    with pytest.raises(UnrenderableSpec) as raised:
        render(
            "minilm",
            "ml",
            SparseAttentionServiceSpec(),
            OperatorSettings(gpu_products={"H200": ("NVIDIA-H200",)}),
            service_monitor_served=False,
        )
    assert raised.value.reason == "UnknownGPUType"
    assert "H100" in str(raised.value)


def test_probes_drain_and_grace_follow_the_runtime() -> None:
    deployment = _by_kind(_render({"server": {"drainSeconds": 45, "port": 9000}}))["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + 45


def _config_volume(deployment: dict[str, Any]) -> dict[str, Any]:
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    return next(v for v in volumes if v["name"] == "config")


def test_config_map_is_immutable_and_named_after_the_config_it_holds() -> None:
    objects = _by_kind(_render({"batching": {"maxBatchSize": 64}}))
    config_map = objects["ConfigMap"]
    config_json = config_map["data"][CONFIG_FILE]
    config = RuntimeConfig.model_validate_json(config_json)
    assert config.batching.max_batch_size == 64
    assert config_map["immutable"] is True
    assert config_map["metadata"]["name"] == config_map_name("minilm", config_json)
    assert re.fullmatch(r"minilm-config-[0-9a-f]{10}", config_map["metadata"]["name"])
    assert config_map["metadata"]["labels"] == child_labels("minilm")
    assert _config_volume(objects["Deployment"]) == {
        "name": "config",
        "configMap": {"name": config_map["metadata"]["name"]},
    }


def test_another_config_is_another_config_map_and_that_alone_rolls_the_pods() -> None:
    first = _by_kind(_render({"batching": {"maxBatchSize": 64}}))
    second = _by_kind(_render({"batching": {"maxBatchSize": 128, "maxQueueDepth": 2048}}))
    names = [o["ConfigMap"]["metadata"]["name"] for o in (first, second)]
    assert names[0] != names[1]
    assert [_config_volume(o["Deployment"])["configMap"]["name"] for o in (first, second)] == names
    # The pod templates differ in the config volume's ConfigMap, and nowhere else.
    rolled = copy.deepcopy(first["Deployment"])
    _config_volume(rolled)["configMap"]["name"] = names[1]
    assert rolled == second["Deployment"]
    assert "annotations" not in second["Deployment"]["spec"]["template"]["metadata"]


def test_config_map_name_is_a_dns_subdomain_for_the_longest_service_name() -> None:
    longest = "s" * NAME_MAX_LENGTH
    objects = _by_kind(
        render(
            longest,
            "ml",
            SparseAttentionServiceSpec(),
            SETTINGS,
            service_monitor_served=False,
        )
    )
    name = objects["ConfigMap"]["metadata"]["name"]
    subdomain = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
    assert len(name) <= 253
    assert re.fullmatch(subdomain, name)
    assert _config_volume(objects["Deployment"])["configMap"]["name"] == name


def test_auth_secret_is_mounted_and_named_in_the_config() -> None:
    objects = _by_kind(
        _render({"security": {"authSecretRef": {"name": "sas-token", "key": "bearer"}}})
    )
    config = json.loads(objects["ConfigMap"]["data"]["config.json"])
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    auth = next(v for v in pod["volumes"] if v["name"] == "auth")
    assert auth["secret"]["items"] == [{"key": "bearer", "path": "token"}]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "auth")
    assert config["server"]["authTokenFile"] == f"{mount['mountPath']}/token"
    assert mount["readOnly"] is True


def test_autoscaling_leaves_replicas_to_the_hpa_on_queue_depth() -> None:
    objects = _by_kind(_render({"replicas": 4, "autoscaling": {"targetQueueDepth": 16}}))
    assert "replicas" not in objects["Deployment"]["spec"]
    (metric,) = objects["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "sas_queue_depth"
    assert metric["pods"]["target"]["averageValue"] == "16"
    assert _by_kind(_render({"replicas": 4}))["Deployment"]["spec"]["replicas"] == 4


def test_rollout_defaults_to_one_extra_pod_at_a_time() -> None:
    strategy = _by_kind(_render({}))["Deployment"]["spec"]["strategy"]
    assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_network_policy_admits_the_listed_peers_and_the_operator() -> None:
    policy = _by_kind(
        _render({"security": {"allowFrom": [{"podSelector": {"matchLabels": {"app": "api"}}}]}})
    )["NetworkPolicy"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"][0] == {"podSelector": {"matchLabels": {"app": "api"}}}
    assert rule["from"][1]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "sas-system"}
    }
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]


def test_empty_selectors_and_values_are_rendered_as_the_api_server_returns_them() -> None:
    """The API server leaves out an empty matchLabels, an empty toleration field and an empty
    ingress list, so rendering them would read as drift on every resync (the e2e test
    test_no_op_resync_sends_no_write_requests_for_children checks it on a real one)."""
    objects = _by_kind(
        _render(
            {
                "scheduling": {"tolerations": [{"key": "", "operator": "Exists", "value": ""}]},
                "security": {"allowFrom": [{"podSelector": {}, "namespaceSelector": {}}]},
            }
        )
    )
    tolerations = objects["Deployment"]["spec"]["template"]["spec"]["tolerations"]
    assert tolerations[0] == {"operator": "Exists"}
    (rule,) = objects["NetworkPolicy"]["spec"]["ingress"]
    assert rule["from"][0] == {"podSelector": {}, "namespaceSelector": {}}
    spec = SparseAttentionServiceSpec.model_validate({"security": {"allowFrom": []}})
    rendered = render("svc", "ns", spec, OperatorSettings(), service_monitor_served=False)
    closed = _by_kind(rendered)["NetworkPolicy"]  # no operator namespace: no peer at all
    assert "ingress" not in closed["spec"]
    assert closed["spec"]["policyTypes"] == ["Ingress"]


def test_the_labels_the_spec_reserves_are_those_every_child_carries() -> None:
    assert sorted(child_labels("svc")) == sorted(OPERATOR_LABEL_KEYS)


def test_service_monitor_scrapes_the_named_metrics_port() -> None:
    objects = _by_kind(
        _render({"monitoring": {"serviceMonitor": {"labels": {"release": "prom"}}}}, monitor=True)
    )
    monitor = objects["ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert "metrics" in [p["name"] for p in objects["Service"]["spec"]["ports"]]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        objects["Service"]["metadata"]["labels"].items()
    )
