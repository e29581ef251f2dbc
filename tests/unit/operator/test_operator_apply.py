"""Server-side apply of children: owner references, no-op passes, drift, pruning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from sas_operator.apply import (
    APPLIED_HASH_ANNOTATION,
    CHILD_KINDS,
    ApplyResult,
    Owner,
    apply_children,
    covers,
    handover_manager,
)
from sas_operator.render import CONFIG_FILE, render
from sas_operator.settings import OperatorSettings
from sas_operator.spec import SparseAttentionServiceSpec
from tests.unit.operator.operator_fakes import FakeCluster, put_replica_set

OWNER = Owner("sparseattention.io/v1alpha1", "SparseAttentionService", "minilm", "ml", "owner-uid")
SETTINGS = OperatorSettings()
BUILT_IN_KINDS = [k for k in CHILD_KINDS if not k[0].startswith("monitoring")]


def _objects(spec: dict[str, object]) -> list[dict[str, Any]]:
    return render(
        "minilm",
        "ml",
        SparseAttentionServiceSpec.model_validate(spec),
        SETTINGS,
        service_monitor_served=False,
    )


def _apply(cluster: FakeCluster, spec: dict[str, object]) -> ApplyResult:
    return apply_children(
        cluster, OWNER, _objects(spec), field_manager="sas-operator", served_kinds=BUILT_IN_KINDS
    )


def _config_map_key(spec: dict[str, object]) -> tuple[str, str, str, str]:
    """The key of the config ConfigMap that `spec` renders (its name follows its content)."""
    config_map = next(o for o in _objects(spec) if o["kind"] == "ConfigMap")
    return ("v1", "ConfigMap", "ml", config_map["metadata"]["name"])


def test_first_pass_creates_every_child_with_an_owner_reference() -> None:
    cluster = FakeCluster()
    result = _apply(cluster, {"replicas": 2})
    assert result.applied == (
        "ServiceAccount/minilm",
        f"ConfigMap/{_config_map_key({'replicas': 2})[3]}",
        "Deployment/minilm",
        "Service/minilm",
        "PodDisruptionBudget/minilm",
    )
    for key in cluster.objects:
        obj = cluster.view(key)
        assert obj is not None
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref["uid"] == "owner-uid"
        assert ref["controller"] is True


def test_second_pass_writes_nothing() -> None:
    cluster = FakeCluster()
    _apply(cluster, {"replicas": 2})
    cluster.calls.clear()
    result = _apply(cluster, {"replicas": 2})
    assert not result.changed
    assert len(result.unchanged) == 5
    assert cluster.writes() == []
    assert ("list", "apps", "replicasets") not in cluster.calls  # no ConfigMap to prune


def test_foreign_fields_do_not_cause_writes_but_drift_in_ours_is_corrected() -> None:
    cluster = FakeCluster()
    _apply(cluster, {})
    key = ("apps/v1", "Deployment", "ml", "minilm")
    cluster.edit(key, {"metadata": {"annotations": {"someone.else/note": "x"}}})
    cluster.calls.clear()
    assert not _apply(cluster, {}).changed
    cluster.edit(key, {"spec": {"replicas": 5}})
    result = _apply(cluster, {})
    assert result.applied == ("Deployment/minilm",)
    deployment = cluster.view(key)
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 1
    assert deployment["metadata"]["annotations"]["someone.else/note"] == "x"


def test_children_the_spec_no_longer_wants_are_pruned() -> None:
    cluster = FakeCluster()
    _apply(cluster, {"replicas": 1, "autoscaling": {"minReplicas": 2, "maxReplicas": 4}})
    assert ("HorizontalPodAutoscaler", "minilm") in cluster.kinds()
    assert ("PodDisruptionBudget", "minilm") in cluster.kinds()
    result = _apply(cluster, {"replicas": 1})
    assert set(result.pruned) == {"HorizontalPodAutoscaler/minilm", "PodDisruptionBudget/minilm"}
    assert ("HorizontalPodAutoscaler", "minilm") not in cluster.kinds()


OLD_CONFIG = {"replicas": 2, "rateLimit": {"requestsPerSecond": 200}}
NEW_CONFIG = {"replicas": 2, "rateLimit": {"requestsPerSecond": 100}}


def test_an_old_config_map_stays_while_a_replica_set_with_pods_mounts_it() -> None:
    """Mid-rollout (or stuck), the old pods and their restarts still read the old config."""
    cluster = FakeCluster()
    _apply(cluster, OLD_CONFIG)
    old_set = put_replica_set(cluster, "ml", "minilm", replicas=2, pods=2)
    old_config, new_config = _config_map_key(OLD_CONFIG), _config_map_key(NEW_CONFIG)
    assert old_config != new_config

    result = _apply(cluster, NEW_CONFIG)
    assert f"ConfigMap/{new_config[3]}" in result.applied
    assert result.pruned == ()
    put_replica_set(cluster, "ml", "minilm", replicas=1, pods=1)
    cluster.edit(old_set, {"spec": {"replicas": 0}})  # scaled down, its pods still going
    assert _apply(cluster, NEW_CONFIG).pruned == ()
    assert cluster.view(old_config) is not None
    assert cluster.view(new_config) is not None

    cluster.edit(old_set, {"status": {"replicas": 0}})
    result = _apply(cluster, NEW_CONFIG)
    assert result.pruned == (f"ConfigMap/{old_config[3]}",)
    assert cluster.view(old_config) is None
    assert cluster.view(new_config) is not None


def test_an_old_config_map_no_replica_set_with_pods_mounts_is_pruned() -> None:
    cluster = FakeCluster()
    _apply(cluster, OLD_CONFIG)
    put_replica_set(cluster, "ml", "minilm", replicas=0, pods=0)  # an old revision, kept
    result = _apply(cluster, NEW_CONFIG)
    assert result.pruned == (f"ConfigMap/{_config_map_key(OLD_CONFIG)[3]}",)
    assert ("list", "apps", "replicasets") in cluster.calls
    assert [name for kind, name in cluster.kinds() if kind == "ConfigMap"] == [
        _config_map_key(NEW_CONFIG)[3]
    ]


def test_metadata_drift_of_the_immutable_config_map_is_applied_over_it() -> None:
    """The API server lets labels and annotations of an immutable ConfigMap change."""
    cluster = FakeCluster()
    _apply(cluster, {})
    key = _config_map_key({})
    cluster.edit(key, {"metadata": {"annotations": {APPLIED_HASH_ANNOTATION: "edited"}}})
    before = cluster.view(key)
    assert before is not None
    result = _apply(cluster, {})
    assert result.applied == (f"ConfigMap/{key[3]}",)
    after = cluster.view(key)
    assert after is not None
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] != "edited"


def test_an_own_config_map_holding_other_data_is_replaced_not_applied_over() -> None:
    """Its name promises its content; an apply over other immutable data would be refused."""
    cluster = FakeCluster()
    _apply(cluster, {})
    key = _config_map_key({})
    wanted = cluster.view(key)
    assert wanted is not None
    cluster.put({**wanted, "data": {CONFIG_FILE: "{}"}})  # deleted and made anew by hand
    result = _apply(cluster, {})
    assert result.applied == (f"ConfigMap/{key[3]}",)
    replaced = cluster.view(key)
    assert replaced is not None
    assert replaced["data"] == wanted["data"]
    assert replaced["immutable"] is True


def test_someone_elses_immutable_config_map_in_the_way_is_left_to_the_refused_apply() -> None:
    cluster = FakeCluster()
    key = _config_map_key({})
    squatter = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": key[3], "namespace": "ml"},
        "immutable": True,
        "data": {CONFIG_FILE: "{}"},
    }
    cluster.put(squatter)
    with pytest.raises(ApiException):
        _apply(cluster, {})
    left = cluster.view(key)
    assert left is not None
    assert left["data"] == squatter["data"]


def test_objects_of_another_owner_are_never_pruned() -> None:
    cluster = FakeCluster()
    _apply(cluster, {})
    cluster.put(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "lookalike",
                "namespace": "ml",
                "labels": {
                    "app.kubernetes.io/instance": "minilm",
                    "app.kubernetes.io/managed-by": "sas-operator",
                },
                "ownerReferences": [{"uid": "someone-else"}],
            },
        }
    )
    assert _apply(cluster, {}).pruned == ()
    assert ("ConfigMap", "lookalike") in cluster.kinds()


def test_autoscaled_deployment_leaves_replicas_to_the_hpa() -> None:
    cluster = FakeCluster()
    _apply(cluster, {"autoscaling": {"minReplicas": 1, "maxReplicas": 3}})
    key = ("apps/v1", "Deployment", "ml", "minilm")
    cluster.edit(key, {"spec": {"replicas": 3}})
    cluster.calls.clear()
    assert not _apply(cluster, {"autoscaling": {"minReplicas": 1, "maxReplicas": 3}}).changed
    deployment = cluster.view(key)
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 3


class _ManagersCluster(FakeCluster):
    """Records each apply's field manager and body."""

    def __init__(self) -> None:
        super().__init__()
        self.applies: list[tuple[str, dict[str, Any]]] = []

    def apply(self, obj: Mapping[str, Any], *, field_manager: str) -> dict[str, Any]:
        self.applies.append((field_manager, dict(obj)))
        return super().apply(obj, field_manager=field_manager)


def _replicas_held_by(*managers: str) -> dict[str, Any]:
    entries = [{"manager": m, "fieldsV1": {"f:spec": {"f:replicas": {}}}} for m in managers]
    return {"metadata": {"managedFields": entries}}


@pytest.mark.parametrize("holders", [["sas-operator"], ["sas-operator", "kube-controller-manager"]])
def test_turning_autoscaling_on_hands_the_replica_count_over_first(holders: list[str]) -> None:
    """Applying a Deployment without the replicas only the operator's manager held would reset
    them to 1: another manager keeps them first (tests/e2e checks it on a real API server)."""
    cluster = _ManagersCluster()
    _apply(cluster, {"replicas": 3})
    key = ("apps/v1", "Deployment", "ml", "minilm")
    cluster.edit(key, _replicas_held_by(*holders))
    cluster.applies.clear()
    _apply(cluster, {"replicas": 3, "autoscaling": {"minReplicas": 2, "maxReplicas": 4}})
    deployments = [(m, o) for m, o in cluster.applies if o["kind"] == "Deployment"]
    if holders == ["sas-operator"]:
        handover, applied = deployments
        assert handover == (
            handover_manager("sas-operator"),
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "minilm", "namespace": "ml"},
                "spec": {"replicas": 3},
            },
        )
    else:  # someone else (the HPA) holds them too: they stay
        (applied,) = deployments
    assert applied[0] == "sas-operator"
    assert "replicas" not in applied[1]["spec"]


def test_a_field_the_spec_no_longer_sets_is_dropped() -> None:
    cluster = FakeCluster()
    _apply(cluster, {"scheduling": {"nodeSelector": {"pool": "gpu"}}})
    key = ("apps/v1", "Deployment", "ml", "minilm")
    before = cluster.view(key)
    assert before is not None
    assert before["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "gpu"}
    result = _apply(cluster, {})
    assert result.applied == ("Deployment/minilm",)
    after = cluster.view(key)
    assert after is not None
    assert "nodeSelector" not in after["spec"]["template"]["spec"]
    hashes = {o["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] for o in (before, after)}
    assert len(hashes) == 2


def test_covers_ignores_defaults_but_not_changed_or_missing_values() -> None:
    wanted = {"spec": {"ports": [{"name": "http", "port": 80}], "type": "ClusterIP"}}
    defaulted = {
        "spec": {
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "type": "ClusterIP",
            "clusterIP": "10.0.0.1",
        }
    }
    assert covers(defaulted, wanted)
    assert not covers(
        {"spec": {"ports": [{"name": "http", "port": 81}], "type": "ClusterIP"}}, wanted
    )
    assert not covers({"spec": {"ports": [], "type": "ClusterIP"}}, wanted)
    assert not covers({"spec": {"type": "ClusterIP"}}, wanted)
    assert not covers({"spec": "ClusterIP"}, wanted)


def test_covers_compares_quantities_by_value() -> None:
    assert covers({"cpu": "500m", "memory": "1Gi"}, {"cpu": "0.5", "memory": "1024Mi"})
    assert covers({"nvidia.com/gpu": "2"}, {"nvidia.com/gpu": "2"})
    assert not covers({"cpu": "500m"}, {"cpu": "5"})
    assert not covers({"interval": "15s"}, {"interval": "30s"})
    assert not covers({"name": "1k"}, {"name": "1000x"})
