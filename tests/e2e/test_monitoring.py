"""The ServiceMonitor follows the cluster: made once its CRD is served, removed when switched off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hack.cluster import tools
from hack.cluster.kube import Kubectl, wait_for
from hack.cluster.operator_process import OperatorProcess

from .services import (
    RESYNC_SECONDS,
    SAS,
    Manifest,
    condition,
    controller_uid,
    sas,
    service_monitors,
    wait_ready,
)

pytestmark = pytest.mark.e2e

PROMETHEUS_OPERATOR = ("github.com/prometheus-operator/prometheus-operator", "v0.80.1")
"""The release whose ServiceMonitor CRD is installed (the chart's tests pin the same one)."""
SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"


def _service_monitor_crd() -> Path:
    module, version = PROMETHEUS_OPERATOR
    folder = tools.download_module(module, version) / "example" / "prometheus-operator-crd"
    return folder / "monitoring.coreos.com_servicemonitors.yaml"


def _established(crd: Manifest | None) -> bool:
    established = None if crd is None else condition(crd, "Established")
    return established is not None and established["status"] == "True"


@pytest.fixture
def monitoring_crd(admin: Kubectl) -> Iterator[Path]:
    """The real ServiceMonitor CRD file; the CRD is removed from the cluster after the test."""
    yield _service_monitor_crd()
    admin.run("delete", "crd", SERVICE_MONITOR_CRD, "--ignore-not-found", "--timeout=60s")


def test_service_monitor_appears_with_its_crd_and_goes_when_switched_off(
    kube: Kubectl, admin: Kubectl, operator: OperatorProcess, monitoring_crd: Path
) -> None:
    kube.apply(sas("watched"))
    service = wait_ready(kube, "watched")
    assert service_monitors(kube, "watched") is None
    ready = condition(service, "Ready")
    assert ready is not None
    assert "monitoring" in ready["message"].lower()

    admin.run("apply", "--server-side", "-f", str(monitoring_crd))
    # Polled, not `kubectl wait`: that fails outright ("accessor error: <nil>") when it reads the
    # new CRD before the API server has written any status conditions.
    wait_for(
        "the ServiceMonitor CRD to be Established",
        lambda: _established(admin.get("crd", SERVICE_MONITOR_CRD)),
        60,
    )
    made = wait_for(
        "the operator to create the ServiceMonitor",
        lambda: service_monitors(kube, "watched") or None,
        3 * RESYNC_SECONDS + 15,
    )
    assert [m["metadata"]["name"] for m in made] == ["watched"]
    assert controller_uid(made[0]) == service["metadata"]["uid"]

    kube.patch(SAS, "watched", {"spec": {"monitoring": {"serviceMonitor": {"enabled": False}}}})
    wait_for(
        "the operator to remove the ServiceMonitor",
        lambda: service_monitors(kube, "watched") == [],
        3 * RESYNC_SECONDS + 15,
    )
