"""The operator's own settings, read once from environment variables at start-up.

Every field documents its variable, unit and default; `OperatorSettings.from_env()` fails
loudly, naming the variable, when a value cannot be parsed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from sas_operator.spec import GPUType

__all__ = ["DEFAULT_GPU_PRODUCTS", "OperatorSettings", "SettingsError"]

DEFAULT_GPU_PRODUCTS: Mapping[str, tuple[str, ...]] = {
    GPUType.H100.value: ("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe", "NVIDIA-H100-NVL"),
    GPUType.H200.value: ("NVIDIA-H200", "NVIDIA-H200-NVL"),
    GPUType.H800.value: ("NVIDIA-H800", "NVIDIA-H800-PCIe"),
    GPUType.GH200.value: ("NVIDIA-GH200-480GB",),
}


LogFormat = Literal["plain", "full", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
PullPolicy = Literal["Always", "IfNotPresent", "Never"]


class SettingsError(ValueError):
    """An environment variable the operator cannot start with; the message names it."""


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    """How this operator runs and what it puts into every service it renders."""

    namespaces: tuple[str, ...] = ()
    """SAS_OPERATOR_WATCH_NAMESPACES, comma-separated: namespaces to watch; empty (the default) watches the
    whole cluster, which needs the ClusterRole rather than per-namespace Roles."""

    peering: str | None = None
    """SAS_OPERATOR_PEERING: kopf peering object name, so that of several operator replicas only one is
    active (needs kopf's peering CRDs); unset (the default) runs standalone, one replica."""

    peering_priority: int = 0
    """SAS_OPERATOR_PEERING_PRIORITY: this operator's kopf peering priority; a live peer of a
    higher or the same priority pauses it (default 0)."""

    log_format: LogFormat = "json"
    """SAS_OPERATOR_LOG_FORMAT: plain, full or json (the default, for log collectors)."""

    log_level: LogLevel = "info"
    """SAS_OPERATOR_LOG_LEVEL: debug, info (the default), warning or error."""

    default_image: str = "sparse-attention-runtime:0.1.0"
    """SAS_OPERATOR_DEFAULT_RUNTIME_IMAGE: runtime image for services whose spec names none."""

    image_pull_policy: PullPolicy = "IfNotPresent"
    """SAS_OPERATOR_IMAGE_PULL_POLICY for the runtime containers."""

    resync_seconds: float = 300.0
    """SAS_OPERATOR_RESYNC_SECONDS: how often every service is reconciled even without a change, to
    correct drift that no watch reported (seconds, default 300)."""

    retry_seconds: float = 60.0
    """SAS_OPERATOR_RETRY_SECONDS: delay before retrying a service whose spec cannot be realised yet
    (a missing Secret or claim): slow, never a hot loop (seconds, default 60)."""

    probe_timeout_seconds: float = 1.0
    """SAS_OPERATOR_PROBE_TIMEOUT_SECONDS: how long to wait for a service's /v1/models when reading the
    backend for status; unreachable is not an error (seconds, default 1)."""

    field_manager: str = "sas-operator"
    """SAS_OPERATOR_FIELD_MANAGER: server-side apply field manager of every child object."""

    operator_namespace: str | None = None
    """POD_NAMESPACE (downward API): the operator's namespace; a service's NetworkPolicy lets
    pods there labelled app.kubernetes.io/name=sas-operator read /v1/models."""

    gpu_product_label: str = "nvidia.com/gpu.product"
    """SAS_OPERATOR_GPU_PRODUCT_LABEL: node label (set by NVIDIA GPU feature discovery) that names the GPU
    product; pods select nodes by it."""

    gpu_products: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(DEFAULT_GPU_PRODUCTS)
    )
    """SAS_OPERATOR_GPU_PRODUCTS, a JSON object {gpuType: [label values]}: which node label values each
    spec gpuType accepts; a gpuType missing here makes its services Degraded (UnknownGPUType)."""

    runtime_uid: int = 10001
    """SAS_OPERATOR_RUNTIME_UID: the non-root UID (and GID) the runtime containers run as."""

    metrics_port: int = 9090
    """SAS_OPERATOR_METRICS_PORT: port of the operator's own Prometheus metrics."""

    health_port: int = 8080
    """SAS_OPERATOR_HEALTH_PORT: port of the operator's liveness endpoint (/healthz)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        """Settings from environment variables (os.environ by default); unset ones default."""
        env = os.environ if env is None else env
        defaults = cls()
        return cls(
            namespaces=tuple(
                n.strip()
                for n in env.get("SAS_OPERATOR_WATCH_NAMESPACES", "").split(",")
                if n.strip()
            ),
            peering=env.get("SAS_OPERATOR_PEERING") or None,
            peering_priority=_integer(
                env, "SAS_OPERATOR_PEERING_PRIORITY", defaults.peering_priority
            ),
            log_format=cast(
                LogFormat, _choice(env, "SAS_OPERATOR_LOG_FORMAT", LogFormat, defaults.log_format)
            ),
            log_level=cast(
                LogLevel, _choice(env, "SAS_OPERATOR_LOG_LEVEL", LogLevel, defaults.log_level)
            ),
            default_image=env.get("SAS_OPERATOR_DEFAULT_RUNTIME_IMAGE") or defaults.default_image,
            image_pull_policy=cast(
                PullPolicy,
                _choice(
                    env, "SAS_OPERATOR_IMAGE_PULL_POLICY", PullPolicy, defaults.image_pull_policy
                ),
            ),
            resync_seconds=_positive(env, "SAS_OPERATOR_RESYNC_SECONDS", defaults.resync_seconds),
            retry_seconds=_positive(env, "SAS_OPERATOR_RETRY_SECONDS", defaults.retry_seconds),
            probe_timeout_seconds=_positive(
                env, "SAS_OPERATOR_PROBE_TIMEOUT_SECONDS", defaults.probe_timeout_seconds
            ),
            field_manager=env.get("SAS_OPERATOR_FIELD_MANAGER") or defaults.field_manager,
            operator_namespace=env.get("POD_NAMESPACE") or None,
            gpu_product_label=env.get("SAS_OPERATOR_GPU_PRODUCT_LABEL")
            or defaults.gpu_product_label,
            gpu_products=_gpu_products(env, defaults.gpu_products),
            runtime_uid=int(_positive(env, "SAS_OPERATOR_RUNTIME_UID", defaults.runtime_uid)),
            metrics_port=int(_positive(env, "SAS_OPERATOR_METRICS_PORT", defaults.metrics_port)),
            health_port=int(_positive(env, "SAS_OPERATOR_HEALTH_PORT", defaults.health_port)),
        )


def _choice(env: Mapping[str, str], name: str, choices: Any, default: str) -> str:
    allowed: tuple[str, ...] = get_args(choices)
    value = env.get(name) or default
    if value not in allowed:
        raise SettingsError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
    return value


def _integer(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected an integer") from None


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a number") from None
    if value <= 0:
        raise SettingsError(f"{name}={raw!r}: expected a positive number")
    return value


def _gpu_products(
    env: Mapping[str, str], default: Mapping[str, tuple[str, ...]]
) -> Mapping[str, tuple[str, ...]]:
    raw = env.get("SAS_OPERATOR_GPU_PRODUCTS")
    if not raw:
        return dict(default)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"SAS_OPERATOR_GPU_PRODUCTS is not JSON: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(p, str) for p in v) for v in data.values()
    ):
        raise SettingsError(
            'SAS_OPERATOR_GPU_PRODUCTS must be {"H100": ["NVIDIA-H100-80GB-HBM3", ...]}'
        )
    return {str(k): tuple(v) for k, v in data.items()}
