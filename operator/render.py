"""Pure rendering: one SparseAttentionService spec to the Kubernetes objects that realise it.

No API calls: `render(name, namespace, spec, settings, ...)` returns plain dicts in a fixed
order, the same for the same input, so every manifest can be validated without a cluster.
Owner references are added when the objects are applied (they need the owner's uid).

The runtime's config goes into an immutable ConfigMap named after its content
(`config_map_name`), as Kustomize's configMapGenerator does: a new config is a new ConfigMap
that only the new pod template mounts, so a config change rolls the pods through the Deployment,
and when the API server refuses the new Deployment the running pods (and their restarts) keep
reading the config they started with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from sas_operator.settings import OperatorSettings
from sas_operator.spec import (
    AUTH_DIR,
    CONFIG_DIR,
    SCRATCH_DIR,
    SHM_DIR,
    TMP_DIR,
    SparseAttentionServiceSpec,
)

__all__ = [
    "AUTH_DIR",
    "CONFIG_DIR",
    "CONFIG_FILE",
    "HTTP_SERVICE_PORT",
    "MANAGED_BY",
    "METRICS_SERVICE_PORT",
    "PRESTOP_SECONDS",
    "QUEUE_DEPTH_METRIC",
    "UnrenderableSpec",
    "child_labels",
    "config_map_name",
    "mounted_config_map",
    "pod_selector",
    "render",
    "service_url",
]

MANAGED_BY = "sas-operator"
APP_NAME = "sparse-attention-service"
CONFIG_FILE = "config.json"
CONFIG_VOLUME = "config"
AUTH_FILE = "token"
CONFIG_HASH_LENGTH = 10
"""Hex digits of the config's sha256 in its ConfigMap's name (40 bits, as Kustomize's suffix)."""
HTTP_SERVICE_PORT = 80
METRICS_SERVICE_PORT = 9090
PRESTOP_SECONDS = 5
"""Seconds a terminating pod keeps serving so endpoints drop it before the runtime drains."""
GRACE_MARGIN_SECONDS = 10
QUEUE_DEPTH_METRIC = "sas_queue_depth"
"""The runtime's gauge of requests waiting, which the HPA scales on (via a metrics adapter)."""


class UnrenderableSpec(ValueError):
    """A valid spec that these operator settings cannot realise; `reason` is one CamelCase word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def pod_selector(name: str) -> dict[str, str]:
    """Labels that select a service's pods (immutable once the Deployment exists)."""
    return {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": name}


def child_labels(name: str) -> dict[str, str]:
    """Labels on every child: the selector plus ownership, which pruning lists by."""
    return {
        **pod_selector(name),
        "app.kubernetes.io/component": "runtime",
        "app.kubernetes.io/part-of": "sparse-attention",
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def config_map_name(name: str, config_json: str) -> str:
    """The name of the ConfigMap holding `config_json` for service `name`: a DNS-1123 subdomain
    (at most 63 + 18 characters), the same for the same config, another for another config."""
    digest = hashlib.sha256(config_json.encode()).hexdigest()[:CONFIG_HASH_LENGTH]
    return f"{name}-config-{digest}"


def mounted_config_map(deployment: Mapping[str, Any]) -> str:
    """The name of the ConfigMap a rendered Deployment's pods read their config from."""
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    name: str = next(v["configMap"]["name"] for v in volumes if v["name"] == CONFIG_VOLUME)
    return name


def service_url(name: str, namespace: str) -> str:
    """In-cluster URL of the service's HTTP API."""
    return f"http://{name}.{namespace}.svc:{HTTP_SERVICE_PORT}"


def render(
    name: str,
    namespace: str,
    spec: SparseAttentionServiceSpec,
    settings: OperatorSettings,
    *,
    service_monitor_served: bool,
) -> list[dict[str, Any]]:
    """Every child object the spec wants, in apply order.

    Raises UnrenderableSpec when the settings cannot realise the spec (an unknown GPU type).
    """
    config_json = spec.runtime_config(
        auth_token_file=f"{AUTH_DIR}/{AUTH_FILE}" if spec.security.auth_secret_ref else None
    ).to_json()
    config_name = config_map_name(name, config_json)
    objects = [
        _service_account(name, namespace),
        _config_map(name, namespace, config_name, config_json),
        _deployment(name, namespace, spec, settings, config_name),
        _service(name, namespace),
    ]
    if service_monitor_served and spec.monitoring.service_monitor.enabled:
        objects.append(_service_monitor(name, namespace, spec))
    wanted_min = spec.autoscaling.min_replicas if spec.autoscaling else spec.replicas
    if wanted_min > 1:
        objects.append(_pod_disruption_budget(name, namespace))
    if spec.autoscaling is not None:
        objects.append(_horizontal_pod_autoscaler(name, namespace, spec))
    if spec.security.allow_from is not None:
        objects.append(_network_policy(name, namespace, spec, settings))
    return objects


def _metadata(name: str, namespace: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": child_labels(name), **extra}


def _service_account(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(name, namespace),
        "automountServiceAccountToken": False,
    }


def _config_map(name: str, namespace: str, config_name: str, config_json: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {**_metadata(name, namespace), "name": config_name},
        "immutable": True,
        "data": {CONFIG_FILE: config_json},
    }


def _gpu_node_affinity(
    spec: SparseAttentionServiceSpec, settings: OperatorSettings
) -> dict[str, Any]:
    gpu_type = spec.resources.gpu_type.value
    products = settings.gpu_products.get(gpu_type)
    if not products:
        known = ", ".join(sorted(settings.gpu_products)) or "none"
        raise UnrenderableSpec(
            "UnknownGPUType",
            f"resources.gpuType {gpu_type} has no node products in the operator's "
            f"SAS_OPERATOR_GPU_PRODUCTS setting (known: {known}); pick a known type or extend the setting",
        )
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {
                                "key": settings.gpu_product_label,
                                "operator": "In",
                                "values": list(products),
                            }
                        ]
                    }
                ]
            }
        }
    }


def _tolerations(spec: SparseAttentionServiceSpec) -> list[dict[str, Any]]:
    # Empty fields left out, as the API server leaves them out of what it returns.
    tolerations = [
        {k: v for k, v in t.model_dump(by_alias=True, exclude_none=True).items() if v != ""}
        for t in spec.scheduling.tolerations
    ]
    if spec.resources.gpus > 0:
        tolerations.append({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


def _container(spec: SparseAttentionServiceSpec, settings: OperatorSettings) -> dict[str, Any]:
    gpus = spec.resources.gpus
    # Quantities as strings, the form the API server returns them in.
    requests = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
    limits = {"memory": spec.resources.memory}
    if gpus:
        requests["nvidia.com/gpu"] = str(gpus)
        limits["nvidia.com/gpu"] = str(gpus)
    mounts = [
        {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": TMP_DIR},
        {"name": "scratch", "mountPath": SCRATCH_DIR},
        {"name": "dshm", "mountPath": SHM_DIR},
    ]
    if spec.model.pvc is not None:
        mounts.append({"name": "model", "mountPath": spec.model.path, "readOnly": True})
    if spec.security.auth_secret_ref is not None:
        mounts.append({"name": "auth", "mountPath": AUTH_DIR, "readOnly": True})
    http_probe = {"path": "/healthz", "port": "http"}
    return {
        "name": "runtime",
        "image": spec.image or settings.default_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": [
            "python",
            "-m",
            "sas_runtime",
            "serve",
            "--config",
            f"{CONFIG_DIR}/{CONFIG_FILE}",
        ],
        "env": [
            {"name": "HOME", "value": SCRATCH_DIR},
            {"name": "TMPDIR", "value": TMP_DIR},
            {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        ],
        "ports": [{"name": "http", "containerPort": spec.server.port, "protocol": "TCP"}],
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": mounts,
        "startupProbe": {
            "httpGet": http_probe,
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 120,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": http_probe,
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": settings.runtime_uid,
            "runAsGroup": settings.runtime_uid,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _volumes(spec: SparseAttentionServiceSpec, config_name: str) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "configMap": {"name": config_name}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        {"name": "scratch", "emptyDir": {"sizeLimit": "8Gi"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
    ]
    if spec.model.pvc is not None:
        volumes.append(
            {
                "name": "model",
                "persistentVolumeClaim": {"claimName": spec.model.pvc, "readOnly": True},
            }
        )
    ref = spec.security.auth_secret_ref
    if ref is not None:
        volumes.append(
            {
                "name": "auth",
                "secret": {
                    "secretName": ref.name,
                    "items": [{"key": ref.key, "path": AUTH_FILE}],
                    "defaultMode": 0o440,
                },
            }
        )
    return volumes


def _deployment(
    name: str,
    namespace: str,
    spec: SparseAttentionServiceSpec,
    settings: OperatorSettings,
    config_name: str,
) -> dict[str, Any]:
    selector = pod_selector(name)
    pod_spec: dict[str, Any] = {
        "serviceAccountName": name,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.runtime_uid,
            "runAsGroup": settings.runtime_uid,
            "fsGroup": settings.runtime_uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": PRESTOP_SECONDS
        + spec.server.drain_seconds
        + GRACE_MARGIN_SECONDS,
        "containers": [_container(spec, settings)],
        "volumes": _volumes(spec, config_name),
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector},
                "matchLabelKeys": ["pod-template-hash"],
            }
        ],
    }
    if spec.resources.gpus > 0:
        pod_spec["affinity"] = _gpu_node_affinity(spec, settings)
    if spec.scheduling.node_selector:
        pod_spec["nodeSelector"] = dict(sorted(spec.scheduling.node_selector.items()))
    tolerations = _tolerations(spec)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if spec.scheduling.priority_class_name:
        pod_spec["priorityClassName"] = spec.scheduling.priority_class_name
    if spec.scheduling.runtime_class_name:
        pod_spec["runtimeClassName"] = spec.scheduling.runtime_class_name
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {
                "maxSurge": spec.rollout.max_surge,
                "maxUnavailable": spec.rollout.max_unavailable,
            },
        },
        "revisionHistoryLimit": 5,
        "template": {"metadata": {"labels": child_labels(name)}, "spec": pod_spec},
    }
    if spec.autoscaling is None:
        deployment_spec = {"replicas": spec.replicas, **deployment_spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, namespace),
        "spec": deployment_spec,
    }


def _service(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace),
        "spec": {
            "type": "ClusterIP",
            "selector": pod_selector(name),
            "ports": [
                {
                    "name": "http",
                    "port": HTTP_SERVICE_PORT,
                    "targetPort": "http",
                    "protocol": "TCP",
                },
                {
                    "name": "metrics",
                    "port": METRICS_SERVICE_PORT,
                    "targetPort": "http",
                    "protocol": "TCP",
                },
            ],
        },
    }


def _service_monitor(name: str, namespace: str, spec: SparseAttentionServiceSpec) -> dict[str, Any]:
    monitor = spec.monitoring.service_monitor
    metadata = _metadata(name, namespace)
    metadata["labels"] = {**dict(sorted(monitor.labels.items())), **metadata["labels"]}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": pod_selector(name)},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": monitor.interval}],
        },
    }


def _pod_disruption_budget(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(name, namespace),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": pod_selector(name)}},
    }


def _horizontal_pod_autoscaler(
    name: str, namespace: str, spec: SparseAttentionServiceSpec
) -> dict[str, Any]:
    autoscaling = spec.autoscaling
    assert autoscaling is not None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(name, namespace),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": QUEUE_DEPTH_METRIC},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": str(autoscaling.target_queue_depth),
                        },
                    },
                }
            ],
            "behavior": {
                "scaleDown": {
                    "stabilizationWindowSeconds": 300,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                }
            },
        },
    }


def _network_policy(
    name: str, namespace: str, spec: SparseAttentionServiceSpec, settings: OperatorSettings
) -> dict[str, Any]:
    assert spec.security.allow_from is not None
    peers: list[dict[str, Any]] = []
    for allowed in spec.security.allow_from:
        peer: dict[str, Any] = {}
        if allowed.namespace_selector is not None:
            peer["namespaceSelector"] = _match_labels(allowed.namespace_selector.match_labels)
        if allowed.pod_selector is not None:
            peer["podSelector"] = _match_labels(allowed.pod_selector.match_labels)
        peers.append(peer)
    if settings.operator_namespace is not None:
        peers.append(
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": settings.operator_namespace}
                },
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": MANAGED_BY}},
            }
        )
    policy: dict[str, Any] = {
        "podSelector": {"matchLabels": pod_selector(name)},
        "policyTypes": ["Ingress"],
    }
    if peers:  # no ingress rule at all admits nobody
        policy["ingress"] = [{"from": peers, "ports": [{"port": "http", "protocol": "TCP"}]}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(name, namespace),
        "spec": policy,
    }


def _match_labels(labels: Mapping[str, str]) -> dict[str, Any]:
    """A label selector as the API server returns it: an empty one (everything) is {}."""
    return {"matchLabels": dict(sorted(labels.items()))} if labels else {}
