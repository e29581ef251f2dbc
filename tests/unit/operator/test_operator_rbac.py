"""The RBAC rules cover every call the operator makes, and nothing it does not use."""

from __future__ import annotations

import yaml

from sas_operator.rbac import CLUSTER_RULES, NAMESPACED_RULES, PEERING_RULES, main, rules_yaml
from sas_operator.reconcile import Reconciler
from sas_operator.settings import OperatorSettings
from tests.unit.operator.operator_fakes import FakeCluster, make_deployment_ready, sas_object

VERBS = {"patch-status": "patch", "create-event": "create"}


def _allowed(verb: str, group: str, resource: str) -> bool:
    return any(
        group in rule.api_groups and resource in rule.resources and verb in rule.verbs
        for rule in NAMESPACED_RULES
    )


def _exercise(cluster: FakeCluster) -> None:
    """Create, grow, lock down, shrink and break a service: every code path that calls the API."""
    key = sas_object(cluster, {})
    cluster.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "t", "namespace": "ml"},
            "data": {"token": "eA=="},
        }
    )
    cluster.put(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "m", "namespace": "ml"},
        }
    )
    reconciler = Reconciler(cluster, OperatorSettings(), read_backend=lambda url, *, timeout: None)
    steps = [
        {"replicas": 2, "autoscaling": {"maxReplicas": 3}},
        {
            "security": {"allowFrom": [], "authSecretRef": {"name": "t"}},
            "model": {"source": "path", "path": "/m", "pvc": "m"},
        },
        {"replicas": 1},
        {"security": {"authSecretRef": {"name": "absent"}}},
    ]
    for spec in steps:
        cluster.objects[key].theirs["spec"] = spec
        reconciler.reconcile("ml", "minilm", trigger="rbac")
        make_deployment_ready(cluster, "ml", "minilm")


def test_every_call_of_a_reconcile_is_allowed() -> None:
    cluster = FakeCluster(served_kinds={("monitoring.coreos.com/v1", "ServiceMonitor")})
    _exercise(cluster)
    used = {(VERBS.get(v, v), g, r) for v, g, r in cluster.calls if v != "discover"}
    assert {v for v, _, _ in used} == {"get", "list", "create", "patch", "delete"}
    denied = sorted(call for call in used if not _allowed(*call))
    assert denied == []


def test_kopf_watches_are_allowed() -> None:
    assert _allowed("watch", "sparseattention.io", "sparseattentionservices")
    assert _allowed("watch", "apps", "deployments")
    assert _allowed("patch", "sparseattention.io", "sparseattentionservices")


def test_secrets_are_only_ever_read_one_by_name() -> None:
    for rule in (*NAMESPACED_RULES, *CLUSTER_RULES, *PEERING_RULES):
        if "secrets" in rule.resources:
            assert rule.verbs == ("get",)


def test_printed_rules_are_a_cluster_role_rule_list() -> None:
    rules = yaml.safe_load(rules_yaml(peering=True))
    assert len(rules) == len(NAMESPACED_RULES) + len(CLUSTER_RULES) + len(PEERING_RULES)
    assert all(set(r) == {"apiGroups", "resources", "verbs"} for r in rules)
    assert len(yaml.safe_load(rules_yaml(peering=False))) == len(rules) - len(PEERING_RULES)
    assert main([]) == 0
