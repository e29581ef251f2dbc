"""The API server (CRD bounds and CEL rules) and the operator (pydantic) agree on what is valid.

Each bad spec below breaks one rule; both sides must refuse it, and for a cross-field rule
with the same message. The e2e tests send the same specs to a real API server.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from sas_operator.crd import build_crd
from sas_operator.reconcile import spec_problem
from sas_operator.spec import SparseAttentionServiceSpec
from tests.unit.operator.crd_checks import admit

CRD = build_crd()
MODEL_PATH_CLEAR = (
    "model.path must keep clear of the pod's own mounts (/etc/sas, /tmp, /scratch, /dev/shm,"
    " /var/run/sas/auth): not one of them, under one or holding one"
)

BAD_SPECS: dict[str, tuple[dict[str, Any], str | None]] = {
    "window without size": (
        {"attention": {"pattern": {"type": "window"}}},
        "pattern type 'window' requires window",
    ),
    "global-window without globalTokens": (
        {"attention": {"pattern": {"type": "global-window", "window": 256}}},
        "pattern type 'global-window' requires window, globalTokens",
    ),
    "dilated without dilation": (
        {"attention": {"pattern": {"type": "dilated"}}},
        "pattern type 'dilated' requires dilation",
    ),
    "topk without topK": (
        {"attention": {"pattern": {"type": "topk"}}},
        "pattern type 'topk' requires topK",
    ),
    "window on a causal pattern": (
        {"attention": {"pattern": {"type": "causal", "window": 1024}}},
        "pattern.window is used only by type window or global-window: remove it, or set that type",
    ),
    "topK on a window pattern": (
        {"attention": {"pattern": {"type": "window", "window": 256, "topK": 4}}},
        "pattern.topK is used only by type topk: remove it, or set that type",
    ),
    "globalTokens not a block multiple": (
        {"attention": {"pattern": {"type": "global-window", "window": 256, "globalTokens": 100}}},
        "pattern.globalTokens must be a multiple of blockSize",
    ),
    "window beyond the model": (
        {
            "model": {"maxSequenceLength": 512},
            "attention": {"pattern": {"type": "window", "window": 1024}},
        },
        "attention.pattern.window must not exceed model.maxSequenceLength",
    ),
    "graph batch beyond maxBatchSize": (
        {"batching": {"maxBatchSize": 16}},
        "attention.cudaGraphs.batchSizes must not exceed batching.maxBatchSize",
    ),
    "repeated graph batch size": (
        {"attention": {"cudaGraphs": {"batchSizes": [1, 2, 2]}}},
        "cudaGraphs.batchSizes must not repeat a size",
    ),
    "burst below rate": (
        {"rateLimit": {"requestsPerSecond": 500, "burst": 100}},
        "rateLimit.burst must be at least requestsPerSecond",
    ),
    "queue shorter than a batch": (
        {"batching": {"maxBatchSize": 64, "maxQueueDepth": 32}},
        "batching.maxQueueDepth must be at least maxBatchSize",
    ),
    "path source without path": (
        {"model": {"source": "path"}},
        "model.path is required when source is 'path'",
    ),
    "builtin with a path": (
        {"model": {"path": "/models/x"}},
        "model.path must be empty when source is 'builtin-minilm' (it ships inside the image)",
    ),
    "pvc without path source": (
        {"model": {"pvc": "models"}},
        "model.pvc needs source 'path': the claim is mounted read-only at model.path",
    ),
    "autoscaling min above max": (
        {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
        "autoscaling.minReplicas must not exceed maxReplicas",
    ),
    "rollout that cannot move": (
        {"rollout": {"maxSurge": 0, "maxUnavailable": 0}},
        "rollout.maxSurge and maxUnavailable cannot both be 0",
    ),
    "cuda without gpus": (
        {"resources": {"gpus": 0}, "server": {"device": "cuda"}},
        "server.device 'cuda' needs resources.gpus of at least 1",
    ),
    "operator-managed token file": (
        {"server": {"authTokenFile": "/x"}},
        "server.authTokenFile is set by the operator: use security.authSecretRef",
    ),
    "peer selecting nothing": (
        {"security": {"allowFrom": [{}]}},
        "each security.allowFrom entry needs a namespaceSelector or a podSelector",
    ),
    "too many GPUs": (
        {"resources": {"gpus": 8}, "autoscaling": {"maxReplicas": 1024}},
        "autoscaling.maxReplicas times resources.gpus must not exceed 4096 GPUs",
    ),
    "toleration Equal without a key": (
        {"scheduling": {"tolerations": [{"operator": "Equal", "value": "gpu"}]}},
        "a toleration with operator Equal needs a key (only operator Exists may leave it out,"
        " to tolerate every taint)",
    ),
    "toleration Equal with an empty key": (
        {"scheduling": {"tolerations": [{"key": "", "value": "gpu"}]}},
        "a toleration with operator Equal needs a key (only operator Exists may leave it out,"
        " to tolerate every taint)",
    ),
    "toleration Exists with a value": (
        {"scheduling": {"tolerations": [{"key": "pool", "operator": "Exists", "value": "a"}]}},
        "a toleration with operator Exists matches any value: leave value out",
    ),
    "tolerationSeconds without NoExecute": (
        {
            "scheduling": {
                "tolerations": [{"key": "pool", "effect": "NoSchedule", "tolerationSeconds": 60}]
            }
        },
        "tolerationSeconds needs effect NoExecute (other effects never evict)",
    ),
    "tolerationSeconds without an effect": (
        {"scheduling": {"tolerations": [{"key": "pool", "tolerationSeconds": 60}]}},
        "tolerationSeconds needs effect NoExecute (other effects never evict)",
    ),
    "model claim over the config mount": (
        {"model": {"source": "path", "path": "/etc/sas", "pvc": "models"}},
        MODEL_PATH_CLEAR,
    ),
    "model path under a scratch mount": (
        {"model": {"source": "path", "path": "/tmp/models/"}},
        MODEL_PATH_CLEAR,
    ),
    "model path holding the token mount": (
        {"model": {"source": "path", "path": "/var/run/", "pvc": "models"}},
        MODEL_PATH_CLEAR,
    ),
    "model claim at the root": (
        {"model": {"source": "path", "path": "/", "pvc": "models"}},
        MODEL_PATH_CLEAR,
    ),
    "operator label on the ServiceMonitor": (
        {"monitoring": {"serviceMonitor": {"labels": {"app.kubernetes.io/part-of": "prom"}}}},
        "monitoring.serviceMonitor.labels must leave out the labels the operator sets on every"
        " child (app.kubernetes.io/name, app.kubernetes.io/instance, app.kubernetes.io/component,"
        " app.kubernetes.io/part-of, app.kubernetes.io/managed-by)",
    ),
    "toleration key with a space": (
        {"scheduling": {"tolerations": [{"key": "bad key", "operator": "Exists"}]}},
        None,
    ),
    "toleration value with a space": (
        {"scheduling": {"tolerations": [{"key": "pool", "value": "has space"}]}},
        None,
    ),
    "unknown GPU type": ({"resources": {"gpuType": "A100"}}, None),
    "negative replicas": ({"replicas": -1}, None),
    "unknown field": ({"replica": 2}, None),
    "bad quantity": ({"resources": {"memory": "16 GB"}}, None),
    "bad interval": ({"monitoring": {"serviceMonitor": {"interval": "soon"}}}, None),
    "block size 96": ({"attention": {"pattern": {"blockSize": 96}}}, None),
    "zero rmse bound": ({"attention": {"validation": {"maxRmse": 0}}}, None),
    "relative model path": ({"model": {"source": "path", "path": "models/x"}}, None),
}


def _object(spec: dict[str, Any], name: str = "svc") -> dict[str, Any]:
    return {
        "apiVersion": "sparseattention.io/v1alpha1",
        "kind": "SparseAttentionService",
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_both_sides_refuse_a_bad_spec(case: str) -> None:
    spec, message = BAD_SPECS[case]
    refused_by_api = admit(CRD, _object(spec))
    with pytest.raises(ValidationError) as refused_by_operator:
        SparseAttentionServiceSpec.model_validate(spec)
    assert refused_by_api, f"the API server would admit {case}"
    if message is not None:
        assert refused_by_api == [message]
        assert message in str(refused_by_operator.value)


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"attention": {"pattern": {"type": "global-window", "window": 256, "globalTokens": 128}}},
        {
            "model": {
                "source": "path",
                "path": "/models/bge",
                "pvc": "models",
                "maxSequenceLength": 512,
            }
        },
        {"batching": {"maxBatchSize": 64}, "attention": {"cudaGraphs": {"batchSizes": [64, 1]}}},
        {"resources": {"gpus": 0}, "server": {"device": "cpu"}},
        {"security": {"allowFrom": [{"podSelector": {}}], "authSecretRef": {"name": "t"}}},
        {"rollout": {"maxSurge": 0, "maxUnavailable": 1}, "autoscaling": {"maxReplicas": 4}},
        {"rateLimit": {"requestsPerSecond": 0.5, "burst": 1}},
        {
            "scheduling": {
                "tolerations": [
                    {"operator": "Exists"},
                    {"key": "", "operator": "Exists", "value": ""},
                    {"key": "example.com/pool", "value": "inference", "effect": "NoSchedule"},
                    {"key": "pool", "effect": "NoExecute", "tolerationSeconds": 30},
                ]
            }
        },
        {"model": {"source": "path", "path": "/scratchpad/tmp", "pvc": "models"}},
        {"model": {"source": "path", "path": "/etc/sas-models"}},
        {"monitoring": {"serviceMonitor": {"labels": {"release": "prometheus"}}}},
    ],
)
def test_both_sides_admit_a_good_spec(spec: dict[str, Any]) -> None:
    assert admit(CRD, _object(spec)) == []
    SparseAttentionServiceSpec.model_validate(spec)


@pytest.mark.parametrize("name", ["9lives", "UPPER", "a" * 64, "dots.not.allowed"])
def test_both_sides_refuse_a_name_that_cannot_name_a_service(name: str) -> None:
    assert admit(CRD, _object({}, name)) != []
    assert spec_problem(name, {})[1] is not None
