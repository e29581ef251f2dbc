"""Exactly the Kubernetes permissions the operator uses, as data, for the chart's RBAC.

`NAMESPACED_RULES` go into a ClusterRole (watching every namespace) or into a Role in each
watched namespace; `CLUSTER_RULES` always need a ClusterRole; `PEERING_RULES` only with kopf
peering. `python -m sas_operator.rbac [--peering]` prints them as ClusterRole rules YAML.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

import yaml

from sas_operator.spec import GROUP, PLURAL

__all__ = ["CLUSTER_RULES", "NAMESPACED_RULES", "PEERING_RULES", "Rule", "main", "rules_yaml"]

_APPLY = ("get", "list", "create", "patch", "delete")
"""Children: read live (get), found for pruning (list), applied server-side (create + patch:
an apply that creates needs both), pruned (delete)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One PolicyRule and the reason the operator needs it."""

    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str

    def to_policy_rule(self) -> dict[str, Any]:
        return {
            "apiGroups": list(self.api_groups),
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }


NAMESPACED_RULES: tuple[Rule, ...] = (
    Rule(
        (GROUP,),
        (PLURAL,),
        ("get", "list", "watch", "patch"),
        "watch services; kopf keeps its progress in their annotations",
    ),
    Rule((GROUP,), (f"{PLURAL}/status",), ("patch",), "write status"),
    Rule(
        (GROUP,),
        (f"{PLURAL}/finalizers",),
        ("update",),
        "children block their service's deletion (blockOwnerDeletion), which clusters running"
        " OwnerReferencesPermissionEnforcement (OpenShift) allow only with this",
    ),
    Rule(("",), ("events",), ("create",), "events on the services (operator and kopf)"),
    Rule(("",), ("serviceaccounts", "configmaps", "services"), _APPLY, "children"),
    Rule(
        ("apps",), ("deployments",), (*_APPLY, "watch"), "children; watched for drift and rollout"
    ),
    Rule(
        ("apps",),
        ("replicasets",),
        ("list",),
        "a config ConfigMap is pruned only once no ReplicaSet with pods mounts it (listed by"
        " the pods' labels, never written)",
    ),
    Rule(("policy",), ("poddisruptionbudgets",), _APPLY, "children"),
    Rule(("autoscaling",), ("horizontalpodautoscalers",), _APPLY, "children"),
    Rule(("networking.k8s.io",), ("networkpolicies",), _APPLY, "children"),
    Rule(("monitoring.coreos.com",), ("servicemonitors",), _APPLY, "children, when served"),
    Rule(
        ("",), ("secrets",), ("get",), "check that security.authSecretRef exists (never read out)"
    ),
    Rule(("",), ("persistentvolumeclaims",), ("get",), "check that model.pvc exists"),
)

CLUSTER_RULES: tuple[Rule, ...] = (
    Rule(
        ("apiextensions.k8s.io",),
        ("customresourcedefinitions",),
        ("list", "watch"),
        "kopf: notice CRDs appearing and going",
    ),
    Rule(("",), ("namespaces",), ("list", "watch"), "kopf: follow the watched namespaces"),
)

PEERING_RULES: tuple[Rule, ...] = (
    Rule(
        ("kopf.dev",),
        ("clusterkopfpeerings", "kopfpeerings"),
        ("get", "list", "watch", "patch"),
        "kopf peering: one active operator at a time",
    ),
)


def rules_yaml(*, peering: bool) -> str:
    """ClusterRole `rules:` for a cluster-wide install, each rule preceded by its reason."""
    rules = [*CLUSTER_RULES, *NAMESPACED_RULES, *(PEERING_RULES if peering else ())]
    return "".join(
        f"# {rule.why}\n" + yaml.safe_dump([rule.to_policy_rule()], sort_keys=False)
        for rule in rules
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sas_operator.rbac", description=__doc__)
    parser.add_argument("--peering", action="store_true", help="include kopf peering rules")
    args = parser.parse_args(argv)
    sys.stdout.write(rules_yaml(peering=args.peering))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
