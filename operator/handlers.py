"""The kopf handlers: thin wiring from cluster events to `Reconciler.reconcile`.

- create / update / resume of a SparseAttentionService reconcile it;
- every event of a Deployment we own reconciles its owner (drift, rollout progress, status;
  the event of a finished rollout lets the old config ConfigMap be pruned);
- a resync loop, started at start-up, reconciles every service every SAS_OPERATOR_RESYNC_SECONDS,
  except while kopf's peering has paused this operator.

No delete handler, timer or daemon: kopf would add a finalizer for those, and a finalizer
makes deletion hang whenever the operator is down. Owner references let the garbage
collector remove the children instead. Kopf's own bookkeeping goes into annotations, never
into the structural status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import kopf
from prometheus_client import start_http_server

from sas_operator.cluster import Cluster, KubernetesCluster
from sas_operator.metrics import OperatorMetrics
from sas_operator.peering import PeeringGate
from sas_operator.reconcile import API_VERSION, Reconciler
from sas_operator.render import MANAGED_BY
from sas_operator.settings import OperatorSettings
from sas_operator.spec import GROUP, KIND, PLURAL, VERSION

__all__ = ["configure", "on_owned_deployment", "on_service", "resync_all", "stop_resync"]

logger = logging.getLogger("sas_operator")


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Read the operator's settings (memo.settings if given, else env), set kopf up, start
    metrics and the resync loop. memo.cluster, when given, replaces the real API client."""
    sas_settings = memo.get("settings") or OperatorSettings.from_env()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Our own Events say what was done and why; kopf posts only its warnings and errors.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.queueing.error_delays = (1, 5, 15, 60)
    cluster: Cluster = memo.get("cluster") or KubernetesCluster()
    metrics = OperatorMetrics()
    if memo.get("serve_metrics", True):
        start_http_server(sas_settings.metrics_port, registry=metrics.registry)
    memo.settings = sas_settings
    memo.reconciler = Reconciler(cluster, sas_settings, metrics=metrics)
    identity = memo.get("identity")
    if sas_settings.peering is not None and identity is None:
        logger.warning(
            "peering without a known peer id (POD_ID): the resync loop cannot follow pauses"
        )
    gate = PeeringGate(
        sas_settings.peering if identity is not None else None,
        identity or "",
        sas_settings.peering_priority,
    )
    memo.resync = asyncio.create_task(_resync_forever(memo.reconciler, gate))


@kopf.on.cleanup()
async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    """Stop the resync loop when the operator stops."""
    task = memo.get("resync")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def on_service(name: str, namespace: str | None, memo: kopf.Memo, reason: str, **_: Any) -> None:
    """A service appeared or changed: reconcile it. A dependency that may still appear (a
    Secret, a claim) retries slowly; a spec that can never work waits for the next edit."""
    if namespace is None:
        return
    reconciler: Reconciler = memo.reconciler
    outcome = reconciler.reconcile(namespace, name, trigger=str(reason))
    if outcome is not None and outcome.retry_after is not None and outcome.problem is not None:
        raise kopf.TemporaryError(outcome.problem.message, delay=outcome.retry_after)


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
def on_owned_deployment(meta: kopf.Meta, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A Deployment we own changed (rollout progress, drift, deletion): reconcile its owner."""
    owner = meta.get("labels", {}).get("app.kubernetes.io/instance")
    if owner is None or namespace is None:
        return
    reconciler: Reconciler = memo.reconciler
    reconciler.reconcile(namespace, owner, trigger="deployment")


def resync_all(reconciler: Reconciler, gate: PeeringGate) -> int:
    """Reconcile every service in the watched namespaces once, skipping those where kopf's
    peering pauses this operator; returns how many were reconciled."""
    scopes = reconciler.settings.namespaces or ("",)
    count = 0
    for namespace in scopes:
        if gate.paused(reconciler.cluster, namespace, datetime.now(UTC)):
            continue
        for body in reconciler.cluster.list(API_VERSION, KIND, namespace, {}):
            meta = body["metadata"]
            try:
                if reconciler.reconcile(meta["namespace"], meta["name"], trigger="resync"):
                    count += 1
            except Exception:
                logger.exception("resync of %s/%s failed", meta["namespace"], meta["name"])
    return count


async def _resync_forever(reconciler: Reconciler, gate: PeeringGate) -> None:
    while True:
        await asyncio.sleep(reconciler.settings.resync_seconds)
        try:
            await asyncio.to_thread(resync_all, reconciler, gate)
        except Exception:
            logger.exception(
                "resync pass failed; next one in %ss", reconciler.settings.resync_seconds
            )
