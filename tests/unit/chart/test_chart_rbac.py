"""The chart grants the operator exactly the permissions sas_operator.rbac says it uses."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sas_operator.apply import CHILD_KINDS
from sas_operator.rbac import CLUSTER_RULES, NAMESPACED_RULES, PEERING_RULES, Rule
from tests.unit.operator.operator_fakes import PLURALS

from .tools import Manifest, find, render

Grant = tuple[str, str, str]
"""(API group, resource, verb)."""


def grants_of_rules(rules: Iterable[Rule]) -> set[Grant]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.api_groups
        for resource in rule.resources
        for verb in rule.verbs
    }


def grants_of_role(role: Manifest) -> set[Grant]:
    grants: set[Grant] = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.update((group, resource, verb) for verb in rule["verbs"])
    return grants


def peering_grants(resource: str) -> set[Grant]:
    return {grant for grant in grants_of_rules(PEERING_RULES) if grant[1] == resource}


def test_cluster_wide_install_grants_exactly_the_operator_rules() -> None:
    (cluster_role,) = find(render(), "ClusterRole")
    expected = (
        grants_of_rules(CLUSTER_RULES)
        | grants_of_rules(NAMESPACED_RULES)
        | peering_grants("clusterkopfpeerings")
    )
    assert grants_of_role(cluster_role) == expected


def test_namespaced_install_grants_exactly_the_operator_rules_per_namespace() -> None:
    manifests = render({"operator": {"watchNamespaces": ["ml-a", "ml-b"]}})
    (cluster_role,) = find(manifests, "ClusterRole")
    assert grants_of_role(cluster_role) == grants_of_rules(CLUSTER_RULES)
    roles = find(manifests, "Role")
    assert len(roles) == 2
    for role in roles:
        assert grants_of_role(role) == grants_of_rules(NAMESPACED_RULES) | peering_grants(
            "kopfpeerings"
        )


def test_without_peering_no_peering_grants() -> None:
    for values in ({}, {"operator": {"watchNamespaces": ["ml"]}}):
        manifests = render({**values, "peering": {"enabled": False}})
        for role in [*find(manifests, "ClusterRole"), *find(manifests, "Role")]:
            assert not any(group == "kopf.dev" for group, _, _ in grants_of_role(role))


def test_every_child_kind_can_be_applied_and_pruned() -> None:
    (cluster_role,) = find(render(), "ClusterRole")
    grants = grants_of_role(cluster_role)
    for api_version, kind in CHILD_KINDS:
        group = api_version.rpartition("/")[0]
        for verb in ("get", "list", "create", "patch", "delete"):
            assert (group, PLURALS[kind], verb) in grants, (kind, verb)


def test_no_wildcards_no_escalation_and_secrets_only_read_by_name() -> None:
    manifests = render({"monitoring": {"serviceMonitor": {"enabled": True}}})
    roles = [*find(manifests, "ClusterRole"), *find(manifests, "Role")]
    grants = set().union(*(grants_of_role(role) for role in roles))
    assert not any("*" in grant for grant in grants)
    assert not any(verb in {"escalate", "bind", "impersonate"} for _, _, verb in grants)
    assert not any(group == "rbac.authorization.k8s.io" for group, _, _ in grants)
    assert {verb for _, resource, verb in grants if resource == "secrets"} == {"get"}
    assert not any(resource in {"pods/exec", "nodes"} for _, resource, _ in grants)


def test_bindings_name_the_operator_service_account() -> None:
    for values in ({}, {"operator": {"watchNamespaces": ["ml"]}}):
        manifests: list[dict[str, Any]] = render(values)
        (account,) = find(manifests, "ServiceAccount")
        bindings = [*find(manifests, "ClusterRoleBinding"), *find(manifests, "RoleBinding")]
        assert bindings
        for binding in bindings:
            assert binding["subjects"] == [
                {
                    "kind": "ServiceAccount",
                    "name": account["metadata"]["name"],
                    "namespace": account["metadata"]["namespace"],
                }
            ]
            role_kind = binding["roleRef"]["kind"]
            role_namespace = binding["metadata"].get("namespace")
            assert [
                r
                for r in find(manifests, role_kind, binding["roleRef"]["name"])
                if r["metadata"].get("namespace") == role_namespace
            ]
