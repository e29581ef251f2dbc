"""The operator's own Prometheus metrics: reconciles, their outcomes and durations, writes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["OperatorMetrics"]


class OperatorMetrics:
    """Metrics of one operator process, registered in `registry` (served on /metrics)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.reconciles = Counter(
            "sas_operator_reconciles",
            "Reconciles of SparseAttentionServices by trigger and outcome (ok, degraded, error).",
            ["trigger", "outcome"],
            registry=self.registry,
        )
        self.problems = Counter(
            "sas_operator_degraded",
            "Reconciles that ended Degraded, by condition reason.",
            ["reason"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "sas_operator_reconcile_duration_seconds",
            "Wall time of one reconcile, API calls included.",
            ["trigger"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.writes = Counter(
            "sas_operator_writes",
            "Objects written to the API server: applied or pruned children, status patches.",
            ["kind"],
            registry=self.registry,
        )
