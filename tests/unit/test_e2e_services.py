"""The end-to-end tests' status readers on the shapes the API server gives a new object."""

from __future__ import annotations

from tests.e2e.services import condition, pod_ready


def test_a_status_whose_conditions_are_null_reads_as_having_none() -> None:
    # a CRD just applied: the API server writes `conditions: null` before Established
    assert condition({"status": {"conditions": None}}, "Established") is None
    assert condition({"status": None}, "Ready") is None
    assert condition({}, "Ready") is None
    established = {"type": "Established", "status": "True"}
    assert condition({"status": {"conditions": [established]}}, "Established") == established


def test_a_pod_is_ready_only_when_running_with_its_ready_condition_true() -> None:
    assert not pod_ready({"status": {"phase": "Pending", "conditions": None}})
    assert not pod_ready({"status": None})
    ready = {"type": "Ready", "status": "True"}
    assert not pod_ready({"status": {"phase": "Pending", "conditions": [ready]}})
    assert pod_ready({"status": {"phase": "Running", "conditions": [ready]}})
