"""checkov passes on the chart's manifests and on the runtime manifests the operator renders;
every skip carries its reason and is still needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hack.lint.tools import checkov
from sas_operator.render import render as render_service
from sas_operator.settings import OperatorSettings
from sas_operator.spec import SparseAttentionServiceSpec

from .tools import NAMESPACE, REPO, Manifest, render

RUNTIME_SKIPS: dict[str, str] = yaml.safe_load(
    (REPO / "hack" / "lint" / "runtime-manifest-skips.yaml").read_text()
)

CHART_VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "everything-on": {
        "monitoring": {
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "grafanaDashboard": {"enabled": True},
        },
        "networkPolicy": {"enabled": True},
    },
    "namespaced": {"operator": {"watchNamespaces": ["ml-serving", "ml-staging"]}},
    "digest-pinned": {"image": {"digest": "sha256:" + "4f" * 32}},
}

# Specs that between them render every child kind: PDB, HPA, NetworkPolicy, ServiceMonitor,
# the auth Secret and model claim volumes.
RUNTIME_SPECS: dict[str, dict[str, Any]] = {
    "minimal": {},
    "locked-down": {
        "replicas": 3,
        "autoscaling": {"minReplicas": 2, "maxReplicas": 4},
        "security": {
            "allowFrom": [{"namespaceSelector": {"matchLabels": {"team": "search"}}}],
            "authSecretRef": {"name": "api-token", "key": "token"},
        },
        "model": {"source": "path", "path": "/models/bge-small", "pvc": "models"},
    },
}


def write_manifests(manifests: list[Manifest], folder: Path) -> Path:
    path = folder / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(manifests))
    return path


def runtime_manifests() -> list[Manifest]:
    settings = OperatorSettings(operator_namespace=NAMESPACE)
    return [
        manifest
        for name, spec in RUNTIME_SPECS.items()
        for manifest in render_service(
            name,
            "ml",
            SparseAttentionServiceSpec.model_validate(spec),
            settings,
            service_monitor_served=True,
        )
    ]


def failed_ids(report: dict[str, Any]) -> set[str]:
    return {check["check_id"] for check in report["results"]["failed_checks"]}


@pytest.mark.parametrize("values", CHART_VALUE_SETS.values(), ids=CHART_VALUE_SETS.keys())
def test_checkov_passes_on_the_chart(values: dict[str, Any], tmp_path: Path) -> None:
    report = checkov(write_manifests(render(values), tmp_path), "kubernetes")
    assert failed_ids(report) == set()
    assert report["summary"]["passed"] > 50
    for skipped in report["results"]["skipped_checks"]:
        assert len(skipped["check_result"]["suppress_comment"].strip()) > 20, skipped


def test_digest_pinned_operator_image_needs_no_digest_skip(tmp_path: Path) -> None:
    report = checkov(
        write_manifests(render(CHART_VALUE_SETS["digest-pinned"]), tmp_path), "kubernetes"
    )
    skipped = {check["check_id"] for check in report["results"]["skipped_checks"]}
    assert "CKV_K8S_43" not in skipped


def test_checkov_passes_on_runtime_manifests_with_the_documented_skips(tmp_path: Path) -> None:
    manifests = runtime_manifests()
    assert {m["kind"] for m in manifests} >= {
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
    }
    report = checkov(write_manifests(manifests, tmp_path), "kubernetes", RUNTIME_SKIPS)
    assert failed_ids(report) == set()
    assert report["summary"]["passed"] > 100


def test_every_runtime_skip_is_still_needed(tmp_path: Path) -> None:
    report = checkov(write_manifests(runtime_manifests(), tmp_path), "kubernetes")
    assert failed_ids(report) == set(RUNTIME_SKIPS)
    assert all(len(reason) > 40 for reason in RUNTIME_SKIPS.values())
