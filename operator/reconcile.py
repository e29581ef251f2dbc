"""One reconcile of one SparseAttentionService: validate, render, apply, observe, report.

Written against the `Cluster` seam and a `BackendReader`, so tests drive it with fakes. The
kopf handlers only call `Reconciler.reconcile`; a spec that cannot be realised comes back as a
Degraded status, a Warning event and a retry delay, never an exception.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import DynamicApiError
from kubernetes.utils import parse_quantity
from pydantic import ValidationError

from sas_operator.apply import CHILD_KINDS, ApplyResult, Owner, apply_children
from sas_operator.cluster import Cluster
from sas_operator.metrics import OperatorMetrics
from sas_operator.render import UnrenderableSpec, render, service_url
from sas_operator.runtime_info import BackendReader, read_backend
from sas_operator.settings import OperatorSettings
from sas_operator.spec import (
    GROUP,
    KIND,
    NAME_MAX_LENGTH,
    NAME_PATTERN,
    VERSION,
    SparseAttentionServiceSpec,
)
from sas_operator.status import Observation, Problem, build_status

__all__ = ["API_VERSION", "Event", "ReconcileOutcome", "Reconciler", "spec_problem"]

logger = logging.getLogger(__name__)

API_VERSION = f"{GROUP}/{VERSION}"
SERVICE_MONITOR = ("monitoring.coreos.com/v1", "ServiceMonitor")
_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class Event:
    """A Kubernetes Event to post on the service."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class ReconcileOutcome:
    """What one reconcile concluded."""

    status: dict[str, Any]
    """The status now on the object (written only if it changed)."""
    status_written: bool
    events: tuple[Event, ...]
    retry_after: float | None
    """Seconds until the next try when the spec cannot be realised yet; None: no retry."""
    problem: Problem | None = None
    """Why the spec is not realised (the Degraded condition), None when it is."""
    applied: ApplyResult | None = None


def spec_problem(
    name: str, spec: Mapping[str, Any]
) -> tuple[SparseAttentionServiceSpec | None, Problem | None]:
    """The validated spec, or the problem that makes it invalid (the CRD's rules, re-checked)."""
    if len(name) > NAME_MAX_LENGTH or not _NAME.match(name):
        return None, Problem(
            "InvalidName",
            f"metadata.name {name!r} must be a DNS-1035 label of at most {NAME_MAX_LENGTH} characters",
        )
    try:
        return SparseAttentionServiceSpec.model_validate(dict(spec)), None
    except ValidationError as exc:
        problems = "; ".join(
            f"spec.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}".replace(
                "spec.: ", "spec: "
            )
            for err in exc.errors()
        )
        return None, Problem("InvalidSpec", f"{problems}; fix the spec (kubectl edit sas {name})")


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Reconciler:
    """Reconciles services against one cluster with one set of operator settings."""

    cluster: Cluster
    settings: OperatorSettings
    read_backend: BackendReader = read_backend
    clock: Callable[[], datetime] = _utc_now
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    _locks: weakref.WeakValueDictionary[tuple[str, str], threading.Lock] = field(
        default_factory=weakref.WeakValueDictionary
    )
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)

    def _lock(self, namespace: str, name: str) -> threading.Lock:
        """One lock per service: handlers, watches and the resync never reconcile it at once.
        A lock lives only while someone holds or waits for it, so deleted services leave none."""
        with self._locks_guard:
            lock = self._locks.get((namespace, name))
            if lock is None:
                lock = self._locks[(namespace, name)] = threading.Lock()
            return lock

    def reconcile(self, namespace: str, name: str, *, trigger: str) -> ReconcileOutcome | None:
        """Bring the children of service `namespace/name` in line with its spec, write its
        status if it changed, post events for what changed; `trigger` labels the metrics.

        The service is read afresh (a handler's body may predate the last status write);
        None when it no longer exists or is being deleted.
        """
        started = time.perf_counter()
        try:
            with self._lock(namespace, name):
                body = self.cluster.get(API_VERSION, KIND, namespace, name)
                if body is None or body["metadata"].get("deletionTimestamp"):
                    return None
                meta = body["metadata"]
                outcome = self._reconcile(
                    name,
                    namespace,
                    meta["uid"],
                    int(meta.get("generation") or 0),
                    body.get("spec") or {},
                    body.get("status") or {},
                )
        except _NamespaceTerminating:
            return None
        except Exception:
            self.metrics.reconciles.labels(trigger, "error").inc()
            raise
        finally:
            self.metrics.duration.labels(trigger).observe(time.perf_counter() - started)
        if outcome.problem is not None:
            self.metrics.problems.labels(outcome.problem.reason).inc()
        self.metrics.reconciles.labels(trigger, "degraded" if outcome.problem else "ok").inc()
        involved = {"apiVersion": API_VERSION, "kind": KIND, "metadata": dict(meta)}
        for event in outcome.events:
            try:
                self.cluster.create_event(
                    involved, type=event.type, reason=event.reason, message=event.message
                )
            except (ApiException, DynamicApiError) as exc:
                if not _namespace_terminating(exc):
                    logger.warning(
                        "event %s on %s/%s not posted: %s",
                        event.reason,
                        namespace,
                        name,
                        _api_reason(exc),
                    )
        return outcome

    def _reconcile(
        self,
        name: str,
        namespace: str,
        uid: str,
        generation: int,
        raw_spec: Mapping[str, Any],
        previous: Mapping[str, Any],
    ) -> ReconcileOutcome:
        events: list[Event] = []
        retry_after: float | None = None
        applied: ApplyResult | None = None
        monitoring_note: str | None = None
        spec, problem = spec_problem(name, raw_spec)
        if spec is not None:
            problem = self._missing_dependency(namespace, spec)
            if problem is not None:
                retry_after = self.settings.retry_seconds
        if spec is not None and problem is None:
            monitor_served = self.cluster.served(*SERVICE_MONITOR)
            if spec.monitoring.service_monitor.enabled and not monitor_served:
                monitoring_note = (
                    "monitoring off: the cluster does not serve monitoring.coreos.com/v1 "
                    "ServiceMonitor (install the Prometheus Operator, or set "
                    "monitoring.serviceMonitor.enabled false)"
                )
            try:
                objects = render(
                    name, namespace, spec, self.settings, service_monitor_served=monitor_served
                )
                applied = apply_children(
                    self.cluster,
                    Owner(API_VERSION, KIND, name, namespace, uid),
                    objects,
                    field_manager=self.settings.field_manager,
                    served_kinds=[k for k in CHILD_KINDS if k != SERVICE_MONITOR or monitor_served],
                )
            except UnrenderableSpec as exc:
                problem = Problem(exc.reason, str(exc))
            except (ApiException, DynamicApiError) as exc:
                if _namespace_terminating(exc):
                    raise _NamespaceTerminating from exc
                problem = Problem(
                    "ApplyFailed", f"the API server refused a child: {_api_reason(exc)}"
                )
                retry_after = self.settings.retry_seconds
        if applied is not None and applied.changed:
            events.append(Event("Normal", "Applied", _describe(applied)))
            if monitoring_note:
                events.append(Event("Normal", "MonitoringOff", monitoring_note))
            if spec is not None and (shortfall := _cpu_shortfall(spec)) is not None:
                events.append(Event("Warning", "FewCPUs", shortfall))
        deployment_key = ("apps/v1", "Deployment", namespace, name)
        deployment = (
            applied.live.get(deployment_key)
            if applied is not None
            else self.cluster.get(*deployment_key)
        )
        ready = int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)
        backend = (
            self.read_backend(
                service_url(name, namespace), timeout=self.settings.probe_timeout_seconds
            )
            if ready and problem is None
            else None
        )
        observation = Observation(
            name=name,
            namespace=namespace,
            generation=generation,
            wanted_replicas=None if spec is None or spec.autoscaling else spec.replicas,
            deployment=deployment,
            problem=problem,
            monitoring_note=monitoring_note,
            backend=backend,
        )
        now = self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        new_status = build_status(observation, previous, now=now).to_patch()
        events.extend(_transition_events(previous, new_status))
        written = _differs(previous, new_status)
        if written:
            self.cluster.patch_status(API_VERSION, KIND, namespace, name, new_status)
            self.metrics.writes.labels("status").inc()
        if applied is not None:
            self.metrics.writes.labels("applied").inc(len(applied.applied))
            self.metrics.writes.labels("pruned").inc(len(applied.pruned))
        return ReconcileOutcome(new_status, written, tuple(events), retry_after, problem, applied)

    def _missing_dependency(
        self, namespace: str, spec: SparseAttentionServiceSpec
    ) -> Problem | None:
        ref = spec.security.auth_secret_ref
        if ref is not None:
            secret = self.cluster.get("v1", "Secret", namespace, ref.name)
            if secret is None:
                return Problem(
                    "MissingAuthSecret",
                    f"Secret {ref.name} (security.authSecretRef) does not exist in {namespace}: "
                    f"create it with key {ref.key} holding the bearer token",
                )
            if ref.key not in (secret.get("data") or {}) | (secret.get("stringData") or {}):
                return Problem(
                    "MissingAuthSecretKey",
                    f"Secret {ref.name} has no key {ref.key} (security.authSecretRef.key): "
                    "add it, or point key at the one holding the token",
                )
        claim = spec.model.pvc
        if (
            claim is not None
            and self.cluster.get("v1", "PersistentVolumeClaim", namespace, claim) is None
        ):
            return Problem(
                "MissingModelClaim",
                f"PersistentVolumeClaim {claim} (model.pvc) does not exist in {namespace}: "
                "create it with the model directory, or drop model.pvc",
            )
        return None


def _cpu_shortfall(spec: SparseAttentionServiceSpec) -> str | None:
    """Why the pod's CPU request is short of its processes (one per HTTP front-end, plus the
    engine's), or None. A warning, not a refusal: the runtime still serves, slower."""
    frontends = spec.server.frontends
    if frontends < 2:
        return None
    wanted = frontends + 1
    cpus = parse_quantity(spec.resources.cpu)  # type: ignore[no-untyped-call]
    if cpus >= wanted:
        return None
    return (
        f"resources.cpu is {spec.resources.cpu} but server.frontends runs {frontends} front-end "
        f"processes and an engine process: request at least {wanted} CPUs, or fewer front-ends"
    )


class _NamespaceTerminating(Exception):
    """The service's namespace is being deleted: nothing can be created there any more."""


def _namespace_terminating(exc: Exception) -> bool:
    return getattr(exc, "status", None) == 403 and "NamespaceTerminating" in str(
        getattr(exc, "body", "") or ""
    )


def _api_reason(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or type(exc).__name__
    body = getattr(exc, "body", None) or getattr(exc, "summary", lambda: "")()
    return f"{status} {reason}: {body}".strip()[:1024]


def _describe(result: ApplyResult) -> str:
    parts = []
    if result.applied:
        parts.append("applied " + ", ".join(result.applied))
    if result.pruned:
        parts.append("pruned " + ", ".join(result.pruned))
    return "; ".join(parts)


def _comparable_status(status: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if v is not None and k != "kopf"}


def _differs(previous: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return _comparable_status(previous) != _comparable_status(new)


def _transition_events(previous: Mapping[str, Any], new: Mapping[str, Any]) -> list[Event]:
    """Events for conditions that changed status or reason since the last write."""
    old = {c.get("type"): c for c in previous.get("conditions") or []}
    events: list[Event] = []
    for condition in new.get("conditions") or []:
        before = old.get(condition["type"], {})
        if (before.get("status"), before.get("reason")) == (
            condition["status"],
            condition["reason"],
        ):
            continue
        kind = condition["type"]
        if kind == "Degraded" and condition["status"] == "True":
            events.append(Event("Warning", condition["reason"], condition["message"]))
        elif kind == "Ready" and condition["status"] == "True":
            events.append(Event("Normal", "Ready", condition["message"]))
        elif kind == "Degraded" and before:
            events.append(Event("Normal", "Recovered", "the spec is realised again"))
    return events
