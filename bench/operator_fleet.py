"""Operator benchmark on the local cluster: apply-to-Deployment and apply-to-Ready latency, 100
services to all Ready, and API writes per no-op resync.

Run from the repository root as a module:

    python -m bench.operator_fleet [--services 100] [--repeats 5] [--out bench/results/]

Targets: < 1 s from apply to Deployment, 100 services Ready < 30 s, 0 writes per no-op resync.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hack.cluster import chart, tools
from hack.cluster.cluster import LocalCluster
from hack.cluster.kube import Kubectl, WaitTimeout, wait_for
from hack.cluster.operator_process import OperatorProcess
from tests.e2e.services import SAS, is_ready, sas

RESYNC_SECONDS = 10
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE", "APPLY")
REQUEST_TOTAL = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
CPU_ONLY = {
    "resources": {"gpus": 0, "cpu": "100m", "memory": "128Mi"},
    "server": {"device": "cpu"},
}


def _ready_names(kube: Kubectl) -> set[str]:
    return {service["metadata"]["name"] for service in kube.list(SAS) if is_ready(service)}


def measure_latency(kube: Kubectl, index: int) -> tuple[float, float]:
    """Seconds from `kubectl apply` returning to the Deployment existing, and to Ready."""
    name = f"latency-{index}"
    kube.apply(sas(name, **CPU_ONLY))
    applied = time.monotonic()
    wait_for("the Deployment", lambda: kube.get("deployments", name), 60, interval=0.01)
    to_deployment = time.monotonic() - applied
    wait_for(f"{name} Ready", lambda: name in _ready_names(kube), 120, interval=0.05)
    return to_deployment, time.monotonic() - applied


def measure_many(kube: Kubectl, count: int) -> float:
    """Seconds from applying `count` services in one request to all of them Ready."""
    names = {f"fleet-{i:03d}" for i in range(count)}
    kube.apply(*(sas(name, **CPU_ONLY) for name in sorted(names)))
    applied = time.monotonic()
    try:
        wait_for(f"{count} services Ready", lambda: names <= _ready_names(kube), 300, interval=0.5)
    except WaitTimeout as timeout:
        raise WaitTimeout(f"{timeout}: {len(names & _ready_names(kube))} were Ready") from None
    return time.monotonic() - applied


def _write_counts(metrics: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in metrics.splitlines():
        match = REQUEST_TOTAL.match(line)
        if match is None:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels.get("verb") in WRITE_VERBS:
            resource = labels.get("resource", "") + (
                f"/{labels['subresource']}" if labels.get("subresource") else ""
            )
            counts[f"{labels['verb']} {resource}"] += int(float(match["value"]))
    return counts


def _operator_writes(cluster: LocalCluster, user: str, since: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    with cluster.audit_log.open() as log:
        log.seek(since)
        for line in log:
            event = json.loads(line)
            if event["user"]["username"] == user:
                reference = event.get("objectRef", {})
                subresource = f"/{reference['subresource']}" if reference.get("subresource") else ""
                counts[f"{event['verb']} {reference.get('resource')}{subresource}"] += 1
    return counts


SETTLING_WRITES = ("PUT pods/status", "PUT deployments/status", "PUT replicasets/status")
"""Writes of the controllers and kwok that go on while a fleet is still settling."""


def _wait_quiet(cluster: LocalCluster, timeout: float = 120) -> float:
    """Wait until kwok and the controllers stop writing pod and workload status; return seconds."""
    started = time.monotonic()
    previous = _write_counts(cluster.metrics())
    while time.monotonic() - started < timeout:
        time.sleep(2)
        current = _write_counts(cluster.metrics())
        if all(current[key] == previous[key] for key in SETTLING_WRITES):
            return time.monotonic() - started
        previous = current
    raise TimeoutError(f"the cluster kept writing {SETTLING_WRITES} for {timeout:.0f}s")


def measure_noop_resync(cluster: LocalCluster, user: str) -> dict[str, Any]:
    """API writes during one resync interval in which nothing changed."""
    settled = _wait_quiet(cluster)
    before = _write_counts(cluster.metrics())
    audit_offset = cluster.audit_log.stat().st_size
    time.sleep(RESYNC_SECONDS + 2)
    delta = _write_counts(cluster.metrics()) - before
    operator = _operator_writes(cluster, user, audit_offset)
    return {
        "settled_after_seconds": settled,
        "window_seconds": RESYNC_SECONDS + 2,
        "operator_writes": sum(operator.values()),
        "operator_writes_by_request": dict(operator),
        "all_clients_writes_by_request": dict(delta),
        "note": "all_clients includes kwok's node heartbeats and the controllers' own writes",
    }


def _versions() -> dict[str, str]:
    found = {tool.name: tool.version for tool in tools.ALL_TOOLS}
    found["python"] = platform.python_version()
    for package in ("kopf", "kubernetes"):
        found[package] = importlib.metadata.version(package)
    return found


def _machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu_model": model}


def run(services: int, repeats: int, workdir: Path) -> dict[str, Any]:
    tools.build_all()
    with LocalCluster(workdir / "cluster") as cluster:
        chart.install_chart(cluster)
        kubeconfig = workdir / "operator.kubeconfig"
        user = chart.write_operator_kubeconfig(cluster, kubeconfig)
        environment = {
            **chart.operator_environment(cluster),
            "SAS_OPERATOR_RESYNC_SECONDS": str(RESYNC_SECONDS),
        }
        operator = OperatorProcess(kubeconfig, environment, workdir / "operator.log")
        operator.start()
        try:
            cluster.admin.run("create", "namespace", "bench")
            kube = cluster.admin.in_namespace("bench")
            latencies = [measure_latency(kube, i) for i in range(repeats)]
            fleet_seconds = measure_many(kube, services)
            resync = measure_noop_resync(cluster, user)
        finally:
            operator.stop()
    to_deployment = [d for d, _ in latencies]
    to_ready = [r for _, r in latencies]
    return {
        "apply_to_deployment_seconds": {
            "median": statistics.median(to_deployment),
            "max": max(to_deployment),
            "samples": to_deployment,
            "target": "< 1",
        },
        "apply_to_ready_seconds": {
            "median": statistics.median(to_ready),
            "max": max(to_ready),
            "samples": to_ready,
        },
        "services_to_all_ready_seconds": {
            "services": services,
            "seconds": fleet_seconds,
            "target": "< 30",
        },
        "writes_per_noop_resync": {**resync, "target": 0},
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.operator_fleet", description=__doc__)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--note", default="", help="free text stored with the result")
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix="sas-bench-") as folder:
        results = run(args.services, args.repeats, Path(folder))
    report = {
        "benchmark": "operator",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.operator_fleet", *sys.argv[1:]]),
        "machine": _machine(),
        "versions": _versions(),
        "resync_seconds": RESYNC_SECONDS,
        "note": args.note,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"operator-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["results"], indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
