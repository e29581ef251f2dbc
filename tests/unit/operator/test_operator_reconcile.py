"""One reconcile against the in-memory API server: children, status, events, retries."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from sas_operator.reconcile import Reconciler
from sas_operator.runtime_info import BackendReport
from sas_operator.settings import OperatorSettings
from tests.unit.operator.operator_fakes import FakeCluster, make_deployment_ready, sas_object

SETTINGS = OperatorSettings(retry_seconds=45.0)


class ScriptedBackend:
    """A BackendReader that answers what the test says and remembers where it was asked."""

    def __init__(self, report: BackendReport | None) -> None:
        self.report = report
        self.asked: list[str] = []

    def __call__(self, base_url: str, *, timeout: float) -> BackendReport | None:
        self.asked.append(base_url)
        return self.report


def _reconciler(cluster: FakeCluster, backend: BackendReport | None = None) -> Reconciler:
    return Reconciler(
        cluster,
        SETTINGS,
        read_backend=ScriptedBackend(backend),
        clock=lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def _reconcile(reconciler: Reconciler, key: tuple[str, str, str, str]) -> Any:
    outcome = reconciler.reconcile(key[2], key[3], trigger="test")
    assert outcome is not None
    return outcome


def _conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_new_service_gets_children_status_and_an_event() -> None:
    cluster = FakeCluster()
    key = sas_object(cluster, {"replicas": 1})
    outcome = _reconcile(_reconciler(cluster), key)
    assert ("Deployment", "minilm") in cluster.kinds()
    assert outcome.retry_after is None
    status = cluster.view(key)["status"]  # type: ignore[index]
    assert status["url"] == "http://minilm.ml.svc:80"
    assert status["observedGeneration"] == 1
    assert status["selector"] == (
        "app.kubernetes.io/instance=minilm,app.kubernetes.io/name=sparse-attention-service"
    )
    assert _conditions(status) == {
        "Ready": ("False", "PodsNotReady"),
        "Progressing": ("True", "RollingOut"),
        "Degraded": ("False", "AsExpected"),
    }
    assert [e["reason"] for e in cluster.events] == ["Applied", "MonitoringOff"]
    assert "monitoring.coreos.com/v1" in next(
        c["message"] for c in status["conditions"] if c["type"] == "Ready"
    )


def test_ready_pods_make_the_service_ready_and_report_the_backend() -> None:
    cluster = FakeCluster()
    key = sas_object(cluster, {})
    reconciler = _reconciler(cluster, BackendReport("dense", "kernel not built for sm_80"))
    _reconcile(reconciler, key)
    make_deployment_ready(cluster, "ml", "minilm")
    _reconcile(reconciler, key)
    status = cluster.view(key)["status"]  # type: ignore[index]
    assert _conditions(status)["Ready"] == ("True", "Serving")
    assert _conditions(status)["Progressing"] == ("False", "RolloutComplete")
    assert (status["backend"], status["fallbackReason"]) == ("dense", "kernel not built for sm_80")
    assert status["readyReplicas"] == 1
    assert reconciler.read_backend.asked == ["http://minilm.ml.svc:80"]  # type: ignore[attr-defined]
    assert cluster.events[-1]["reason"] == "Ready"


def test_a_resync_with_nothing_to_do_writes_nothing() -> None:
    cluster = FakeCluster(served_kinds={("monitoring.coreos.com/v1", "ServiceMonitor")})
    key = sas_object(cluster, {"replicas": 2, "security": {"allowFrom": []}})
    reconciler = _reconciler(cluster, BackendReport("sparse", None))
    _reconcile(reconciler, key)
    make_deployment_ready(cluster, "ml", "minilm")
    _reconcile(reconciler, key)
    cluster.calls.clear()
    cluster.events.clear()
    outcome = _reconcile(reconciler, key)
    assert cluster.writes() == []
    assert not outcome.status_written
    assert cluster.events == []
    assert {verb for verb, _, _ in cluster.calls} <= {"get", "list", "discover"}


def test_missing_auth_secret_degrades_and_retries_slowly() -> None:
    cluster = FakeCluster()
    key = sas_object(cluster, {"security": {"authSecretRef": {"name": "sas-token"}}})
    outcome = _reconcile(_reconciler(cluster), key)
    assert outcome.retry_after == 45.0
    assert outcome.problem.reason == "MissingAuthSecret"
    assert ("Deployment", "minilm") not in cluster.kinds()
    status = cluster.view(key)["status"]  # type: ignore[index]
    assert _conditions(status)["Degraded"] == ("True", "MissingAuthSecret")
    assert _conditions(status)["Ready"] == ("False", "MissingAuthSecret")
    assert cluster.events == [
        {
            "type": "Warning",
            "reason": "MissingAuthSecret",
            "message": "Secret sas-token (security.authSecretRef) does not exist in ml: "
            "create it with key token holding the bearer token",
        }
    ]
    cluster.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "sas-token", "namespace": "ml"},
            "data": {"token": "c2VjcmV0"},
        }
    )
    outcome = _reconcile(_reconciler(cluster), key)
    assert outcome.retry_after is None
    assert ("Deployment", "minilm") in cluster.kinds()
    assert "Recovered" in [e["reason"] for e in cluster.events]


@pytest.mark.parametrize(
    ("spec", "settings", "reason"),
    [
        ({"resources": {"gpuType": "GH200"}}, OperatorSettings(gpu_products={}), "UnknownGPUType"),
        ({"replicas": -1}, SETTINGS, "InvalidSpec"),
        ({"model": {"source": "path"}}, SETTINGS, "InvalidSpec"),
        (
            {"model": {"source": "path", "path": "/m", "pvc": "models"}},
            SETTINGS,
            "MissingModelClaim",
        ),
    ],
)
def test_specs_that_cannot_be_realised_are_degraded_not_raised(
    spec: dict[str, Any], settings: OperatorSettings, reason: str
) -> None:
    cluster = FakeCluster()
    key = sas_object(cluster, spec)
    reconciler = Reconciler(cluster, settings, read_backend=ScriptedBackend(None))
    outcome = _reconcile(reconciler, key)
    assert outcome.problem.reason == reason
    assert ("Deployment", "minilm") not in cluster.kinds()
    assert _conditions(outcome.status)["Degraded"] == ("True", reason)
    assert (outcome.retry_after is not None) == (reason == "MissingModelClaim")
    assert cluster.events[-1]["type"] == "Warning"


def test_invalid_spec_names_the_field() -> None:
    cluster = FakeCluster()
    key = sas_object(cluster, {"batching": {"maxBatchSize": 8}, "attention": {}})
    outcome = _reconcile(_reconciler(cluster), key)
    assert outcome.problem.reason == "InvalidSpec"
    assert "cudaGraphs.batchSizes must not exceed batching.maxBatchSize" in outcome.problem.message


def test_invalid_name_is_degraded() -> None:
    cluster = FakeCluster()
    key = sas_object(cluster, {}, name="9-starts-with-a-digit")
    assert _reconcile(_reconciler(cluster), key).problem.reason == "InvalidName"


def test_turning_monitoring_on_when_served_creates_a_service_monitor_and_prunes_it_after() -> None:
    cluster = FakeCluster(served_kinds={("monitoring.coreos.com/v1", "ServiceMonitor")})
    key = sas_object(cluster, {})
    reconciler = _reconciler(cluster)
    _reconcile(reconciler, key)
    assert ("ServiceMonitor", "minilm") in cluster.kinds()
    cluster.edit(key, {"spec": {"monitoring": {"serviceMonitor": {"enabled": False}}}})
    outcome = _reconcile(reconciler, key)
    assert outcome.applied.pruned == ("ServiceMonitor/minilm",)


def test_metrics_count_reconciles_and_writes() -> None:
    cluster = FakeCluster()
    key = sas_object(cluster, {})
    reconciler = _reconciler(cluster)
    _reconcile(reconciler, key)
    registry = reconciler.metrics.registry
    assert (
        registry.get_sample_value(
            "sas_operator_reconciles_total", {"trigger": "test", "outcome": "ok"}
        )
        == 1
    )
    assert registry.get_sample_value("sas_operator_writes_total", {"kind": "applied"}) == 4
    assert registry.get_sample_value("sas_operator_writes_total", {"kind": "status"}) == 1


def test_a_service_that_is_gone_or_going_is_left_alone() -> None:
    cluster = FakeCluster()
    reconciler = _reconciler(cluster)
    assert reconciler.reconcile("ml", "absent", trigger="test") is None
    key = sas_object(cluster, {})
    cluster.edit(key, {"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}})
    cluster.calls.clear()
    assert reconciler.reconcile("ml", "minilm", trigger="test") is None
    assert cluster.writes() == []


TERMINATING = ApiException(status=403, reason="Forbidden")
TERMINATING.body = '{"details": {"causes": [{"reason": "NamespaceTerminating"}]}}'


class TerminatingNamespace(FakeCluster):
    """A namespace being deleted: nothing new can be created in it."""

    def apply(self, obj: Mapping[str, Any], *, field_manager: str) -> dict[str, Any]:
        if self.view((obj["apiVersion"], obj["kind"], "ml", obj["metadata"]["name"])) is None:
            raise TERMINATING
        return super().apply(obj, field_manager=field_manager)

    def create_event(
        self, involved: Mapping[str, Any], *, type: str, reason: str, message: str
    ) -> None:
        raise TERMINATING


def test_a_terminating_namespace_is_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    cluster = TerminatingNamespace()
    key = sas_object(cluster, {})
    assert _reconciler(cluster).reconcile("ml", "minilm", trigger="test") is None
    assert cluster.view(key) is not None
    assert [c for c in cluster.calls if c[0] in ("patch-status", "create-event")] == []
    assert "forbidden" not in caplog.text.lower()


def test_an_event_that_cannot_be_posted_does_not_fail_the_reconcile() -> None:
    class NoEvents(FakeCluster):
        def create_event(
            self, involved: Mapping[str, Any], *, type: str, reason: str, message: str
        ) -> None:
            raise ApiException(status=500, reason="Internal Server Error")

    cluster = NoEvents()
    key = sas_object(cluster, {})
    outcome = _reconcile(_reconciler(cluster), key)
    assert [e.reason for e in outcome.events] == ["Applied", "MonitoringOff"]
    assert ("Deployment", "minilm") in cluster.kinds()


def test_per_service_locks_do_not_outlive_their_reconciles() -> None:
    cluster = FakeCluster()
    reconciler = _reconciler(cluster)
    for name in ("a", "b", "c"):
        reconciler.reconcile("ml", name, trigger="test")  # gone services, as after deletes
    key = sas_object(cluster, {})
    _reconcile(reconciler, key)
    assert len(reconciler._locks) == 0
    held = reconciler._lock("ml", "minilm")
    assert reconciler._lock("ml", "minilm") is held, "one lock per service while in use"


@pytest.mark.parametrize(
    ("frontends", "cpu", "warned"),
    [(6, "4", True), (6, "7", False), (6, "6500m", True), (1, "1", False), (3, "4000m", False)],
)
def test_fewer_cpus_than_runtime_processes_is_a_warning_event(
    frontends: int, cpu: str, warned: bool
) -> None:
    cluster = FakeCluster()
    key = sas_object(cluster, {"server": {"frontends": frontends}, "resources": {"cpu": cpu}})
    outcome = _reconcile(_reconciler(cluster), key)
    warnings = [e for e in outcome.events if e.type == "Warning" and e.reason == "FewCPUs"]
    assert bool(warnings) == warned
    assert outcome.problem is None, "the service is still realised"
    if warned:
        assert f"at least {frontends + 1} CPUs" in warnings[0].message
