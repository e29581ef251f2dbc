"""Status from observations: conditions a person can act on, stable when nothing changes."""

from __future__ import annotations

from typing import Any

import pytest

from sas_operator.runtime_info import BackendReport
from sas_operator.status import Observation, Problem, build_status


def _deployment(
    *,
    replicas: int = 2,
    ready: int = 2,
    updated: int = 2,
    generation: int = 3,
    observed: int = 3,
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "conditions": conditions or [],
        },
    }


def _status(observation: Observation, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    return build_status(observation, previous, now="2026-01-01T00:00:00Z").to_patch()


def _conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def _observe(deployment: dict[str, Any] | None, **extra: Any) -> Observation:
    return Observation(
        name="svc", namespace="ml", generation=7, wanted_replicas=2, deployment=deployment, **extra
    )


@pytest.mark.parametrize(
    ("deployment", "wanted", "expected"),
    [
        (
            _deployment(),
            2,
            {
                "Ready": ("True", "Serving"),
                "Progressing": ("False", "RolloutComplete"),
                "Degraded": ("False", "AsExpected"),
            },
        ),
        (
            _deployment(updated=1, replicas=3, ready=2),
            2,
            {
                "Ready": ("True", "Serving"),
                "Progressing": ("True", "RollingOut"),
                "Degraded": ("False", "AsExpected"),
            },
        ),
        (
            _deployment(generation=4, observed=3, ready=1),
            2,
            {
                "Ready": ("False", "PodsNotReady"),
                "Progressing": ("True", "RollingOut"),
                "Degraded": ("False", "AsExpected"),
            },
        ),
        (
            _deployment(
                ready=0,
                conditions=[
                    {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
                ],
            ),
            2,
            {
                "Ready": ("False", "PodsNotReady"),
                "Progressing": ("False", "RolloutStuck"),
                "Degraded": ("True", "RolloutStuck"),
            },
        ),
        (
            _deployment(
                ready=0,
                conditions=[
                    {"type": "ReplicaFailure", "status": "True", "message": "exceeded quota"}
                ],
            ),
            2,
            {
                "Ready": ("False", "PodsNotReady"),
                "Progressing": ("False", "PodsCannotBeCreated"),
                "Degraded": ("True", "PodsCannotBeCreated"),
            },
        ),
        (
            _deployment(replicas=0, ready=0, updated=0),
            0,
            {
                "Ready": ("False", "ScaledToZero"),
                "Progressing": ("False", "RolloutComplete"),
                "Degraded": ("False", "AsExpected"),
            },
        ),
        (
            None,
            2,
            {
                "Ready": ("False", "PodsNotReady"),
                "Progressing": ("True", "Creating"),
                "Degraded": ("False", "AsExpected"),
            },
        ),
    ],
)
def test_conditions_follow_the_deployment(
    deployment: dict[str, Any] | None, wanted: int, expected: dict[str, tuple[str, str]]
) -> None:
    observation = Observation(
        name="svc", namespace="ml", generation=7, wanted_replicas=wanted, deployment=deployment
    )
    status = _status(observation)
    assert _conditions(status) == expected
    assert all(c["observedGeneration"] == 7 for c in status["conditions"])


def test_a_problem_blocks_everything_and_says_why() -> None:
    problem = Problem("MissingAuthSecret", "create Secret t")
    status = _status(_observe(_deployment(), problem=problem))
    assert _conditions(status) == {
        "Ready": ("False", "MissingAuthSecret"),
        "Progressing": ("False", "Blocked"),
        "Degraded": ("True", "MissingAuthSecret"),
    }
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["message"] == "create Secret t"


def test_autoscaled_service_counts_what_the_hpa_asked_for() -> None:
    observation = Observation(
        name="svc",
        namespace="ml",
        generation=1,
        wanted_replicas=None,
        deployment=_deployment(replicas=5, ready=5, updated=5),
    )
    status = _status(observation)
    assert _conditions(status)["Ready"] == ("True", "Serving")
    assert (status["replicas"], status["readyReplicas"]) == (5, 5)


def test_transition_times_hold_while_the_status_holds() -> None:
    first = _status(_observe(_deployment()))
    again = build_status(_observe(_deployment()), first, now="2026-06-01T00:00:00Z").to_patch()
    assert again == first
    changed = build_status(
        _observe(_deployment(ready=1)), first, now="2026-06-01T00:00:00Z"
    ).to_patch()
    times = {c["type"]: c["lastTransitionTime"] for c in changed["conditions"]}
    assert times == {
        "Ready": "2026-06-01T00:00:00Z",
        "Progressing": "2026-01-01T00:00:00Z",
        "Degraded": "2026-01-01T00:00:00Z",
    }


def test_backend_is_reported_and_kept_while_unreachable() -> None:
    reported = _status(_observe(_deployment(), backend=BackendReport("sparse", None)))
    assert (reported["backend"], reported["fallbackReason"]) == ("sparse", None)
    kept = _status(_observe(_deployment()), previous=reported)
    assert kept["backend"] == "sparse"


def test_monitoring_note_reaches_the_ready_message() -> None:
    status = _status(_observe(_deployment(), monitoring_note="monitoring off: no CRD"))
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["message"] == "2/2 pods ready; monitoring off: no CRD"
