"""Property tests: every valid spec is admitted by the CRD and renders valid, stable manifests."""

from __future__ import annotations

import json
import re
from typing import Any

import kubernetes_validate
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sas_operator.crd import build_crd
from sas_operator.render import render
from sas_operator.settings import OperatorSettings
from sas_operator.spec import SparseAttentionServiceSpec
from sas_runtime.config import RuntimeConfig
from tests.unit.operator.crd_checks import admit

CRD = build_crd()
SETTINGS = OperatorSettings(operator_namespace="sas-system")
DNS_LABEL = st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
LABELS = st.dictionaries(
    st.one_of(DNS_LABEL, st.builds("{}.io/{}".format, DNS_LABEL, DNS_LABEL)), DNS_LABEL, max_size=3
)
INTERVAL = re.compile(r"^[0-9]+(ms|s|m|h)$")


@st.composite
def patterns(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(
            ["dense", "causal", "window", "global-window", "dilated", "document", "topk"]
        )
    )
    block = draw(st.sampled_from([64, 128]))
    pattern: dict[str, Any] = {"type": kind, "blockSize": block}
    if kind in ("window", "global-window"):
        pattern["window"] = draw(st.integers(1, 4096))
    if kind == "global-window":
        pattern["globalTokens"] = block * draw(st.integers(1, 4))
    if kind == "dilated":
        pattern["dilation"] = draw(st.integers(2, 16))
    if kind == "topk":
        pattern["topK"] = draw(st.integers(1, 64))
    return pattern


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    max_batch = draw(st.sampled_from([8, 32, 64, 256]))
    gpus = draw(st.integers(0, 8))
    spec: dict[str, Any] = {
        "replicas": draw(st.integers(0, 12)),
        "attention": {
            "backend": draw(st.sampled_from(["auto", "sparse", "dense", "reference"])),
            "pattern": draw(patterns()),
            "dtype": draw(st.sampled_from(["bfloat16", "float16", "float32"])),
            "cudaGraphs": {
                "enabled": draw(st.booleans()),
                "batchSizes": draw(
                    st.lists(st.integers(1, max_batch), min_size=1, max_size=8, unique=True)
                ),
            },
        },
        "batching": {
            "maxBatchSize": max_batch,
            "maxQueueDepth": max_batch * draw(st.integers(1, 64)),
        },
        "resources": {
            "gpus": gpus,
            "gpuType": draw(st.sampled_from(["H100", "H200", "H800", "GH200"])),
            "cpu": draw(st.sampled_from(["1", "3500m", "16"])),
            "memory": draw(st.sampled_from(["4Gi", "16Gi", "120Gi"])),
        },
        "server": {
            "port": draw(st.integers(1024, 65535)),
            "drainSeconds": draw(st.integers(0, 600)),
            "device": draw(st.sampled_from(["auto", "cpu", "cuda"] if gpus else ["auto", "cpu"])),
        },
        "scheduling": {
            "nodeSelector": draw(LABELS),
            "tolerations": draw(
                st.lists(
                    st.fixed_dictionaries(
                        {"key": DNS_LABEL, "operator": st.just("Exists")},
                        optional={"effect": st.sampled_from(["NoSchedule", "NoExecute"])},
                    ),
                    max_size=2,
                )
            ),
        },
        "rollout": draw(
            st.sampled_from(
                [{}, {"maxSurge": 0, "maxUnavailable": 1}, {"maxSurge": 2, "maxUnavailable": 1}]
            )
        ),
        "monitoring": {
            "serviceMonitor": {
                "enabled": draw(st.booleans()),
                "interval": draw(st.sampled_from(["15s", "1m", "500ms"])),
                "labels": draw(LABELS),
            }
        },
    }
    if draw(st.booleans()):
        low = draw(st.integers(1, 4))
        spec["autoscaling"] = {
            "minReplicas": low,
            "maxReplicas": low + draw(st.integers(0, 8)),
            "targetQueueDepth": draw(st.integers(1, 512)),
        }
    security: dict[str, Any] = {}
    if draw(st.booleans()):
        security["allowFrom"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"podSelector": st.builds(lambda m: {"matchLabels": m}, LABELS)},
                    optional={"namespaceSelector": st.builds(lambda m: {"matchLabels": m}, LABELS)},
                ),
                max_size=3,
            )
        )
    if draw(st.booleans()):
        security["authSecretRef"] = {"name": draw(DNS_LABEL)}
    spec["security"] = security
    if draw(st.booleans()):
        spec["model"] = {
            "source": "path",
            "path": "/models/" + draw(DNS_LABEL),
            "pvc": draw(DNS_LABEL),
        }
    return spec


def _validated(spec: dict[str, Any]) -> SparseAttentionServiceSpec:
    try:
        return SparseAttentionServiceSpec.model_validate(spec)
    except ValidationError:
        assume(False)
        raise


def _check_service_monitor(monitor: dict[str, Any]) -> None:
    """ServiceMonitor is not in Kubernetes' own schemas: check the fields Prometheus reads."""
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert all(isinstance(v, str) for v in monitor["metadata"]["labels"].values())
    assert monitor["spec"]["selector"]["matchLabels"]
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] == "metrics"
        assert INTERVAL.match(endpoint["interval"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(), monitor_served=st.booleans())
def test_every_valid_spec_renders_valid_deterministic_manifests(
    spec: dict[str, Any], monitor_served: bool
) -> None:
    model = _validated(spec)
    objects = render("svc", "ns", model, SETTINGS, service_monitor_served=monitor_served)
    again = render(
        "svc",
        "ns",
        SparseAttentionServiceSpec.model_validate(spec),
        SETTINGS,
        service_monitor_served=monitor_served,
    )
    assert json.dumps(objects) == json.dumps(again)
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            _check_service_monitor(obj)
        else:
            kubernetes_validate.validate(obj, "1.32", strict=True)
    config = next(o for o in objects if o["kind"] == "ConfigMap")["data"]["config.json"]
    assert RuntimeConfig.model_validate_json(config) == model.runtime_config(
        auth_token_file=RuntimeConfig.model_validate_json(config).server.auth_token_file
    )


@settings(max_examples=60, deadline=None)
@given(spec=specs())
def test_the_crd_admits_every_spec_the_model_accepts(spec: dict[str, Any]) -> None:
    _validated(spec)
    obj = {
        "apiVersion": "sparseattention.io/v1alpha1",
        "kind": "SparseAttentionService",
        "metadata": {"name": "svc"},
        "spec": spec,
    }
    assert admit(CRD, obj) == []
