"""Bad services never reach the operator: the API server rejects them, each with a message.

A spec the schema accepts but the cluster cannot realise is shown as Degraded with the reason.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from hack.cluster.kube import Kubectl, KubectlError, wait_for
from hack.cluster.operator_process import OperatorProcess
from sas_operator.spec import GROUP, PLURAL, VERSION

from .services import SAS, condition, sas

pytestmark = pytest.mark.e2e

# (id, spec, what the API server must say). Bounds and enums come from the generated schema,
# cross-field rules from its CEL; the messages are the API server's own.
INVALID_SPECS: list[tuple[str, dict[str, Any], str]] = [
    ("negative-replicas", {"replicas": -1}, "spec.replicas in body should be greater than or equal to 0"),
    ("too-many-replicas", {"replicas": 5000}, "spec.replicas in body should be less than or equal to 1024"),
    ("replicas-not-integer", {"replicas": "two"}, 'spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer'),
    ("unknown-field", {"replicaCount": 2}, 'unknown field "spec.replicaCount"'),
    ("too-many-gpus", {"resources": {"gpus": 9}}, "spec.resources.gpus in body should be less than or equal to 8"),
    ("unknown-gpu-type", {"resources": {"gpuType": "A100"}}, 'spec.resources.gpuType: Unsupported value: "A100"'),
    ("unknown-backend", {"attention": {"backend": "fast"}}, 'spec.attention.backend: Unsupported value: "fast"'),
    ("unknown-pattern", {"attention": {"pattern": {"type": "random"}}}, 'spec.attention.pattern.type: Unsupported value: "random"'),
    ("window-without-size", {"attention": {"pattern": {"type": "window"}}}, "pattern type 'window' requires window"),
    ("window-on-causal", {"attention": {"pattern": {"type": "causal", "window": 1024}}}, "pattern.window is used only by type window or global-window: remove it, or set that type"),
    ("dilation-on-dense", {"attention": {"pattern": {"dilation": 2}}}, "pattern.dilation is used only by type dilated: remove it, or set that type"),
    ("path-source-without-path", {"model": {"source": "path"}}, "model.path is required when source is 'path'"),
    ("builtin-with-path", {"model": {"source": "builtin-minilm", "path": "/models/x"}}, "model.path must be empty when source is 'builtin-minilm'"),
    ("relative-model-path", {"model": {"source": "path", "path": "models/x"}}, "spec.model.path in body should match '^/'"),
    ("autoscaling-min-above-max", {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "autoscaling.minReplicas must not exceed maxReplicas"),
    ("rollout-cannot-move", {"rollout": {"maxSurge": 0, "maxUnavailable": 0}}, "rollout.maxSurge and maxUnavailable cannot both be 0"),
    ("cuda-without-gpus", {"resources": {"gpus": 0}, "server": {"device": "cuda"}}, "server.device 'cuda' needs resources.gpus of at least 1"),
    ("auth-file-by-hand", {"server": {"authTokenFile": "/token"}}, "server.authTokenFile is set by the operator: use security.authSecretRef"),
    ("empty-peer", {"security": {"allowFrom": [{}]}}, "each security.allowFrom entry needs a namespaceSelector or a podSelector"),
    ("graph-above-batch", {"batching": {"maxBatchSize": 8}, "attention": {"cudaGraphs": {"batchSizes": [1, 16]}}}, "attention.cudaGraphs.batchSizes must not exceed batching.maxBatchSize"),
    ("bad-scrape-interval", {"monitoring": {"serviceMonitor": {"interval": "15 seconds"}}}, "spec.monitoring.serviceMonitor.interval in body should match"),
    ("burst-below-rate", {"rateLimit": {"requestsPerSecond": 100, "burst": 10}}, "rateLimit.burst must be at least requestsPerSecond"),
    ("image-with-space", {"image": "runtime image"}, "spec.image in body should match"),
    ("auth-secret-without-name", {"security": {"authSecretRef": {"key": "token"}}}, "spec.security.authSecretRef.name: Required value"),
    ("toleration-equal-without-key", {"scheduling": {"tolerations": [{"value": "gpu"}]}}, "a toleration with operator Equal needs a key"),
    ("toleration-exists-with-value", {"scheduling": {"tolerations": [{"key": "pool", "operator": "Exists", "value": "a"}]}}, "a toleration with operator Exists matches any value: leave value out"),
    ("toleration-seconds-without-noexecute", {"scheduling": {"tolerations": [{"key": "pool", "effect": "NoSchedule", "tolerationSeconds": 60}]}}, "tolerationSeconds needs effect NoExecute"),
    ("toleration-key-with-space", {"scheduling": {"tolerations": [{"key": "bad key", "operator": "Exists"}]}}, "spec.scheduling.tolerations[0].key in body should match"),
    ("model-claim-over-config", {"model": {"source": "path", "path": "/etc/sas", "pvc": "models"}}, "model.path must keep clear of the pod's own mounts"),
    ("model-path-holding-a-mount", {"model": {"source": "path", "path": "/var/run", "pvc": "models"}}, "model.path must keep clear of the pod's own mounts"),
    ("operator-label-on-monitor", {"monitoring": {"serviceMonitor": {"labels": {"app.kubernetes.io/managed-by": "me"}}}}, "monitoring.serviceMonitor.labels must leave out the labels the operator sets"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "message"),
    [pytest.param(spec, message, id=name) for name, spec, message in INVALID_SPECS],
)
def test_api_server_rejects_invalid_spec(kube: Kubectl, spec: dict[str, Any], message: str) -> None:
    with pytest.raises(KubectlError) as rejected:
        _create_on_server(kube, sas("bad", **spec))
    assert message in str(rejected.value)
    assert kube.get(SAS, "bad") is None


def test_api_server_rejects_a_name_that_cannot_name_a_service(kube: Kubectl) -> None:
    with pytest.raises(KubectlError) as rejected:
        _create_on_server(kube, sas("9-starts-with-a-digit"))
    assert "metadata.name must be a DNS-1035 label of at most 63 characters" in str(rejected.value)


def _create_on_server(kube: Kubectl, manifest: dict[str, Any]) -> None:
    """POST straight to the API server with strict field validation: kubectl's own client-side
    checks never get a say, so every rejection seen here is the server's."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{kube.namespace}/{PLURAL}?fieldValidation=Strict"
    kube.run("create", "--raw", path, "-f", "-", stdin=json.dumps(manifest))


def test_unrealisable_spec_is_degraded_with_the_reason(
    kube: Kubectl, operator: OperatorProcess
) -> None:
    kube.apply(sas("locked", security={"authSecretRef": {"name": "absent-token"}}))

    def degraded() -> dict[str, Any] | None:
        found = kube.get(SAS, "locked") or {}
        state = condition(found, "Degraded")
        return state if state is not None and state["status"] == "True" else None

    state = wait_for("the service to show Degraded", degraded, 60)
    assert state["reason"] == "MissingAuthSecret"
    assert "absent-token" in state["message"]
    service = kube.get(SAS, "locked")
    assert service is not None
    ready = condition(service, "Ready")
    assert ready is not None
    assert ready["status"] == "False"
