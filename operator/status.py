"""A service's status from what was observed: its Deployment, problems, the runtime's report.

Pure: the reconciler gathers the observations, `build_status` turns them into the status
written back, with conditions Ready / Progressing / Degraded whose reasons and messages tell a
person what to do. A condition keeps its lastTransitionTime while its status holds, so an
unchanged world yields an identical status (and no write).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sas_operator.cluster import label_selector
from sas_operator.render import pod_selector, service_url
from sas_operator.runtime_info import BackendReport
from sas_operator.spec import Condition, SparseAttentionServiceStatus

__all__ = ["Observation", "Problem", "build_status", "selector_string"]

Verdict = tuple[Literal["True", "False", "Unknown"], str, str]
"""A condition's status, reason and message."""


@dataclass(frozen=True, slots=True)
class Problem:
    """Why the spec cannot be realised now: a CamelCase reason and what to do about it."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything status is built from, gathered in one reconcile."""

    name: str
    namespace: str
    generation: int
    wanted_replicas: int | None
    """Replicas the spec asks for; None when an autoscaler decides."""
    deployment: Mapping[str, Any] | None
    """The live Deployment, None when it does not exist."""
    problem: Problem | None = None
    monitoring_note: str | None = None
    """Why monitoring is off, when it is off although the spec asks for it."""
    backend: BackendReport | None = None


def selector_string(name: str) -> str:
    """The pods' label selector as the scale subresource reports it."""
    return label_selector(pod_selector(name))


def _deployment_counts(deployment: Mapping[str, Any] | None) -> dict[str, int]:
    status = (deployment or {}).get("status") or {}
    spec = (deployment or {}).get("spec") or {}
    return {
        "desired": int(spec.get("replicas", 1)),
        "replicas": int(status.get("replicas") or 0),
        "ready": int(status.get("readyReplicas") or 0),
        "updated": int(status.get("updatedReplicas") or 0),
    }


def _deployment_condition(deployment: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any]:
    for condition in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return {}


def _rollout_problem(deployment: Mapping[str, Any] | None, selector: str) -> Problem | None:
    progressing = _deployment_condition(deployment, "Progressing")
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return Problem(
            "RolloutStuck",
            "new pods did not become ready within the Deployment's progress deadline: "
            f"see kubectl describe pods -l {selector} (image, GPU capacity, probes)",
        )
    failure = _deployment_condition(deployment, "ReplicaFailure")
    if failure.get("status") == "True":
        return Problem(
            "PodsCannotBeCreated", f"{failure.get('message', 'the ReplicaSet cannot create pods')}"
        )
    return None


def _rolling_out(deployment: Mapping[str, Any], desired: int, counts: Mapping[str, int]) -> bool:
    observed = int((deployment.get("status") or {}).get("observedGeneration") or 0)
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    return observed < generation or counts["updated"] < desired or counts["replicas"] > desired


def build_status(
    observation: Observation, previous: Mapping[str, Any] | None, *, now: str
) -> SparseAttentionServiceStatus:
    """The status to write, given what was observed and the status already written."""
    previous = previous or {}
    selector = selector_string(observation.name)
    deployment = observation.deployment
    counts = _deployment_counts(deployment)
    desired = (
        counts["desired"] if observation.wanted_replicas is None else observation.wanted_replicas
    )
    problem = observation.problem or _rollout_problem(deployment, selector)

    degraded: Verdict
    progressing: Verdict
    ready: Verdict
    if problem is not None:
        degraded = ("True", problem.reason, problem.message)
    else:
        degraded = ("False", "AsExpected", "the spec is realised")

    if observation.problem is not None:
        progressing = ("False", "Blocked", "nothing is rolled out until Degraded clears")
    elif deployment is None:
        progressing = ("True", "Creating", "the Deployment is being created")
    elif problem is not None:
        progressing = ("False", problem.reason, "the rollout cannot go on: see Degraded")
    elif _rolling_out(deployment, desired, counts):
        progressing = (
            "True",
            "RollingOut",
            f"{counts['updated']}/{desired} pods run the current template",
        )
    else:
        progressing = ("False", "RolloutComplete", f"{desired} pods run the current template")

    note = f"; {observation.monitoring_note}" if observation.monitoring_note else ""
    if observation.problem is not None:
        ready = ("False", observation.problem.reason, observation.problem.message)
    elif desired == 0:
        ready = ("False", "ScaledToZero", "replicas is 0: kubectl scale sas to serve")
    elif counts["ready"] >= desired:
        ready = ("True", "Serving", f"{counts['ready']}/{desired} pods ready{note}")
    else:
        ready = (
            "False",
            "PodsNotReady",
            f"{counts['ready']}/{desired} pods ready: see kubectl describe pods -l {selector}{note}",
        )

    old_conditions = {c.get("type"): c for c in previous.get("conditions") or []}
    conditions = [
        _condition(kind, value, old_conditions.get(kind), observation.generation, now)
        for kind, value in (("Ready", ready), ("Progressing", progressing), ("Degraded", degraded))
    ]
    backend = observation.backend
    return SparseAttentionServiceStatus(
        observed_generation=observation.generation,
        replicas=counts["replicas"],
        ready_replicas=counts["ready"],
        selector=selector,
        url=service_url(observation.name, observation.namespace),
        backend=backend.backend if backend else previous.get("backend"),
        fallback_reason=backend.fallback_reason if backend else previous.get("fallbackReason"),
        conditions=conditions,
    )


def _condition(
    kind: str,
    value: Verdict,
    old: Mapping[str, Any] | None,
    generation: int,
    now: str,
) -> Condition:
    status, reason, message = value
    since = old.get("lastTransitionTime") if old and old.get("status") == status else None
    return Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since or now,
        observed_generation=generation,
    )
