"""GPU serving benchmark: our runtime (CUDA graphs on, off) versus a naive server, and attention
requests on sparse versus dense, all through real HTTP on one GPU.

Servers, each alone on the GPU: ours (backend auto, CUDA graphs on, `--frontends` HTTP front-end
processes around one engine process), the same in one process (`ours-1-process`: HTTP, batching
and the model share one Python process; short sentences and passages only), ours with graphs off
and the dense backend, and the naive server of `bench.serve_cpu` (FastAPI, sentence-transformers
`encode` once per request, float32) on the GPU. Embeddings: short sentences and ~220-token passages at each
client count. Attention (ours only): 1x16x1024x64 and 1x16x4096x64 bfloat16 with a window pattern;
the first server runs them on the sparse kernel (auto), the second on dense. The load generator is
`bench.serve_cpu.collect` (closed loop, aiohttp, loopback) in several processes. GPU utilisation
is sampled with nvidia-smi during each point. Prints the table and ratios, states the issue's
targets beside the measured figures, writes a JSON result under bench/results/.

    python -m bench.serve_gpu [--seconds 4] [--warmup 1.5] [--clients 1,16,64,256] [--frontends 6]
        [--skip-naive] [--skip-graphs-off] [--one-process-clients 1,64]

Each point of ours also records the CPU its processes spent per answered request, by role
(engine, front-ends, server), over the measured window: the process near a whole core is the
one that limits throughput.

On the device machine (no registry there): `python -m bench.device_carry` here prepares the
wheels its image lacks, the model with float16 weights and CUTLASS's headers (see its doc for the
PYTHONPATH to set there); build the kernel (`python -m sas_runtime.kernels.build --out DIR`, 30 s
for the whole matrix with 16 jobs on the H200 machine) and point `SAS_KERNEL_LIBRARY` at it.
Run 2026-11-30: 83 s for 12 points and two server start-ups (`--skip-naive --skip-graphs-off
--clients 1,64,256 --attention-clients 16 --seconds 3 --warmup 1`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import json
import multiprocessing
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.gpu_info import gpu_and_driver
from bench.serve_cpu import (
    MODEL_NAME,
    SENTENCES,
    RequestFactory,
    _machine,
    _wait_ready,
    collect,
    short_sentence,
    summarize,
)
from hack.cluster.cluster import free_port
from tests.runtime_process import (
    REAL_ENGINE,
    REPO_ROOT,
    process_command,
    process_stat,
    process_tree,
    start_runtime_process,
)

ATTENTION_SHAPES = {"attention-1k": 1024, "attention-4k": 4096}
"""Workload name -> sequence length of a 1 x 16 x S x 64 bfloat16 request."""
WINDOW = {"type": "window", "window": 256}
"""The attention requests' pattern: keys within 256 tokens on either side."""


def _passages() -> list[str]:
    rng = random.Random(7)
    return [" ".join(rng.choice(SENTENCES) for _ in range(26)) for _ in range(16)]


PASSAGES = _passages()
"""16 passages of about 220 tokens (26 short sentences each)."""


def passage(rng: random.Random) -> tuple[str, dict[str, Any] | bytes]:
    """One ~220-token passage to embed."""
    return "/v1/embeddings", {"model": MODEL_NAME, "input": rng.choice(PASSAGES)}


@cache
def _attention_body(length: int) -> bytes:
    import torch

    from sas_runtime.tensor_codec import encode_safetensors

    generator = torch.Generator().manual_seed(length)
    q, k, v = (
        torch.randn(1, 16, length, 64, generator=generator).to(torch.bfloat16) for _ in range(3)
    )
    return encode_safetensors({"q": q, "k": k, "v": v}, {"pattern": json.dumps(WINDOW)})


def _request_factory(workload: str) -> RequestFactory:
    if workload == "short":
        return short_sentence
    if workload == "passage":
        return passage
    body = _attention_body(ATTENTION_SHAPES[workload])
    return lambda _: ("/v1/attention", body)


def _load_process(
    job: tuple[str, str, int, float, float, int],
) -> tuple[list[float], dict[str, int], float]:
    """One load process's latencies and statuses, and the share of a core it was busy (when
    near 1, the load generator, not the server, set the pace)."""
    url, workload, clients, seconds, warmup, seed = job
    request = _request_factory(workload)
    cpu, wall = time.process_time(), time.perf_counter()
    latencies, statuses = asyncio.run(
        collect(url, clients=clients, seconds=seconds, warmup=warmup, request=request, seed=seed)
    )
    busy = (time.process_time() - cpu) / (time.perf_counter() - wall)
    return latencies, dict(statuses), busy


class GpuSampler:
    """nvidia-smi sampling utilisation every 100 ms while a point runs."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> GpuSampler:
        query = ["--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        try:
            self._process = subprocess.Popen(
                ["nvidia-smi", *query, "-lms", "100"], stdout=subprocess.PIPE, text=True
            )
        except FileNotFoundError:
            self._process = None
        return self

    def __exit__(self, *_: object) -> None:
        if self._process is not None:
            self._process.terminate()

    def summary(self) -> dict[str, float | None]:
        """Mean and max utilisation (%) and the most memory used (MiB) over the samples."""
        if self._process is None:
            return {"gpu_util_mean": None, "gpu_util_max": None, "gpu_memory_mib_max": None}
        output, _ = self._process.communicate()
        rows = [line.split(",") for line in output.splitlines() if line.count(",") == 1]
        util = [float(u) for u, _ in rows] or [float("nan")]
        memory = [float(m) for _, m in rows] or [float("nan")]
        return {
            "gpu_util_mean": sum(util) / len(util),
            "gpu_util_max": max(util),
            "gpu_memory_mib_max": max(memory),
        }


def _role(pid: int) -> str:
    """Which process of ours `pid` is: engine, frontend or server (the supervisor, or the whole
    server in one process); OSError when it is gone."""
    return next((a for a in process_command(pid) if a in ("engine", "frontend")), "server")


def _cpu_by_role(pids: list[int]) -> dict[str, float]:
    """CPU seconds (user + system) so far of each role: the engine process, the front-end
    processes together, and the serving process (the supervisor, or the whole server when it
    runs in one process)."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds: dict[str, float] = {}
    for pid in pids:
        try:
            fields = process_stat(pid)
            role = _role(pid)
        except OSError:
            continue
        seconds[role] = seconds.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return seconds


_STAGE_HISTOGRAMS = {
    "sas_request_duration_seconds": "server",
    "sas_queue_wait_seconds": "queue_wait",
    "sas_engine_duration_seconds": "engine",
    "sas_batch_size": "batch_size",
}
"""Our histograms whose means over a point split its latency: server (a request's time inside
our front-end, from its headers to its response), queue_wait (per unit of work), engine (per
batch), batch_size (units per batch)."""


def histogram_totals(metrics_text: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of each stage histogram in a /metrics text, summed over its labels (less
    the scrapes of /metrics itself)."""
    totals: dict[str, tuple[float, float]] = {}
    for family in text_string_to_metric_families(metrics_text):
        stage = _STAGE_HISTOGRAMS.get(family.name)
        if stage is None:
            continue
        total = count = 0.0
        for sample in family.samples:
            if sample.labels.get("endpoint") == "/metrics":
                continue
            if sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
        totals[stage] = (total, count)
    return totals


def _scrape_stages(url: str) -> dict[str, tuple[float, float]]:
    return histogram_totals(httpx.get(f"{url}/metrics", timeout=10).text)


def stage_means(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """Each stage's mean between two `histogram_totals` (milliseconds; batch_size in units)."""
    means = {}
    for stage, (total, count) in after.items():
        previous_total, previous_count = before.get(stage, (0.0, 0.0))
        if count > previous_count:
            mean = (total - previous_total) / (count - previous_count)
            if stage == "batch_size":
                means[stage] = mean
            else:
                means[f"{stage}_ms"] = 1000 * mean
    return means


@dataclass
class Point:
    """One (server, workload, clients) measurement. cpu_us_per_request: CPU microseconds per
    answered request by role of our server's processes; stages: means of our latency stages
    over the measured window (`stage_means`) (both None for the naive server); load_cpu_busy:
    mean and max share of a core the load processes were busy; profiled: py-spy sampled our
    processes during the point (two 1 kHz samplers on the same machine)."""

    server: str
    workload: str
    clients: int
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    requests: int
    statuses: dict[str, int]
    gpu: dict[str, float | None]
    cpu_us_per_request: dict[str, float] | None = None
    stages: dict[str, float] | None = None
    load_cpu_busy: dict[str, float] | None = None
    profiled: bool = False


def measure(
    url: str,
    server: str,
    workload: str,
    clients: int,
    args: argparse.Namespace,
    server_pid: int | None = None,
) -> Point:
    """Drive `clients` closed-loop clients spread over up to `--load-processes` processes;
    with `server_pid`, also count the CPU its process tree spent per request."""
    pids = process_tree(server_pid) if server_pid is not None else []
    processes = max(1, min(args.load_processes, clients))
    shares = [clients // processes + (i < clients % processes) for i in range(processes)]
    jobs = [
        (url, workload, share, args.seconds, args.warmup, 1000 * i)
        for i, share in enumerate(shares)
    ]
    with GpuSampler() as sampler, multiprocessing.get_context("fork").Pool(processes) as pool:
        pending = pool.map_async(_load_process, jobs)
        # The server's CPU is read over the measured window only, as the requests are counted.
        time.sleep(args.warmup)
        profiles = _start_profiles(pids, f"{server}-{workload}-{clients}", args)
        before = _cpu_by_role(pids)
        histograms_before = _scrape_stages(url) if pids else {}
        time.sleep(args.seconds)
        cpu = {role: spent - before.get(role, 0.0) for role, spent in _cpu_by_role(pids).items()}
        stages = stage_means(histograms_before, _scrape_stages(url)) if pids else None
        outcomes = pending.get()
        for profile in profiles:
            if profile.wait():
                print(f"py-spy failed: {profile.args!r}", file=sys.stderr)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    for part, counts, _ in outcomes:
        latencies += part
        statuses.update(counts)
    load_busy = [busy for _, _, busy in outcomes]
    result = summarize(server, clients, args.seconds, latencies, statuses)
    answered = sum(statuses.values())
    point = Point(
        server=server,
        workload=workload,
        clients=clients,
        throughput_rps=result.throughput_rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        mean_ms=result.mean_ms,
        requests=result.requests,
        statuses=result.statuses,
        gpu=sampler.summary(),
        cpu_us_per_request={role: 1e6 * spent / answered for role, spent in cpu.items()}
        if pids and answered
        else None,
        stages=stages,
        load_cpu_busy={"mean": sum(load_busy) / len(load_busy), "max": max(load_busy)},
        profiled=bool(profiles),
    )
    print(
        f"{server:>22} {workload:>13} {clients:4d} clients: {point.throughput_rps:9.1f} req/s  "
        f"P50 {point.p50_ms:8.2f} ms  P99 {point.p99_ms:8.2f} ms  "
        f"GPU {point.gpu['gpu_util_mean']}%  {point.statuses}  CPU us/request "
        f"{ {role: round(us) for role, us in (point.cpu_us_per_request or {}).items()} }  "
        f"stages { {stage: round(value, 3) for stage, value in (stages or {}).items()} }  "
        f"load CPU max {max(load_busy):.2f}",
        flush=True,
    )
    return point


def _start_profiles(
    pids: list[int], point: str, args: argparse.Namespace
) -> list[subprocess.Popen[bytes]]:
    """With --py-spy DIR and `point` among --py-spy-points: py-spy sampling the engine process
    and one front-end (or the one server process) over the measured window, as collapsed stacks
    (one file per process under DIR)."""
    if not args.py_spy or point not in args.py_spy_points:
        return []
    Path(args.py_spy).mkdir(parents=True, exist_ok=True)
    chosen: dict[str, int] = {}
    for pid in pids:
        chosen.setdefault(_role(pid), pid)
    return [
        subprocess.Popen(
            [
                *("py-spy", "record", "--pid", str(pid), "--rate", "1000", "--nonblocking"),
                *("--duration", str(max(1, round(args.seconds))), "--format", "raw"),
                *("--output", str(Path(args.py_spy) / f"{point}-{role}.txt")),
            ],
            stdout=subprocess.DEVNULL,
        )
        for role, pid in chosen.items()
        if role != "server" or len(chosen) == 1
    ]


def runtime_config(*, backend: str, graphs: bool, frontends: int) -> dict[str, Any]:
    """Ours on the GPU: bfloat16, batches up to 64, limits far above the offered load."""
    return {
        "model": {"source": "builtin-minilm", "longInputs": "truncate"},
        "attention": {"backend": backend, "cudaGraphs": {"enabled": graphs}},
        "batching": {
            "windowMicroseconds": 100,
            "maxBatchSize": 64,
            "maxQueueDepth": 4096,
            "maxTokens": 32768,
        },
        "rateLimit": {"requestsPerSecond": 1_000_000, "burst": 10_000_000},
        "server": {
            "device": "cuda",
            "maxBodyBytes": 64 << 20,
            "maxInputs": 256,
            "frontends": frontends,
        },
    }


def engine_floor(
    sentence_batches: tuple[int, ...] = (1, 64), calls: int = 300
) -> list[dict[str, Any]]:
    """Our engine alone (no HTTP, no batcher; `main` runs this in a process of its own): the time
    of one `embed` call of short sentences, CUDA graphs on and off; what a served request cannot
    go below."""
    import torch

    from sas_runtime.config import RuntimeConfig
    from sas_runtime.model_engine import build_engine

    rows = []
    for graphs in (True, False):
        config = runtime_config(backend="auto", graphs=graphs, frontends=1)
        engine = build_engine(RuntimeConfig.model_validate(config))
        engine.warmup()
        rng = random.Random(3)
        for batch in sentence_batches:
            texts = [engine.encode([rng.choice(SENTENCES)])[0] for _ in range(batch)]
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                engine.embed(texts)
                times.append(time.perf_counter() - started)
            times.sort()
            row = {
                "graphs": graphs,
                "batch": batch,
                "p50_ms": 1000 * times[len(times) // 2],
                "min_ms": 1000 * times[0],
                "calls": calls,
            }
            print(
                f"engine alone, graphs {'on ' if graphs else 'off'} batch {batch:3d}: "
                f"P50 {row['p50_ms']:.3f} ms, min {row['min_ms']:.3f} ms",
                flush=True,
            )
            rows.append(row)
        del engine
        torch.cuda.empty_cache()
    return rows


def run_ours(
    name: str,
    config: dict[str, Any],
    workloads: list[str],
    args: argparse.Namespace,
    clients: list[int] | None = None,
) -> tuple[list[Point], dict[str, Any]]:
    with tempfile.TemporaryDirectory() as workdir:
        ours = start_runtime_process(config, engine=REAL_ENGINE, workdir=Path(workdir))
        try:
            (card,) = httpx.get(f"{ours.url}/v1/models", timeout=10).json()["data"]
            points = [
                measure(ours.url, name, workload, count, args, server_pid=ours.process.pid)
                for workload in workloads
                for count in clients or _clients_for(workload, args)
            ]
        finally:
            ours.stop()
        log = [
            line for line in ours.output().splitlines() if "CUDA graph" in line or "warm" in line
        ]
    return points, {"config": config, "models_card": card, "log": log[-5:]}


def run_naive(workloads: list[str], args: argparse.Namespace) -> list[Point]:
    port = free_port()
    command = [sys.executable, "-m", "bench.serve_cpu", "baseline", "--port", str(port)]
    baseline = subprocess.Popen([*command, "--device", "cuda"], cwd=REPO_ROOT)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", baseline)
        return [
            measure(f"http://127.0.0.1:{port}", "naive", workload, clients, args)
            for workload in workloads
            for clients in _clients_for(workload, args)
        ]
    finally:
        baseline.kill()
        baseline.wait()


def _clients_for(workload: str, args: argparse.Namespace) -> list[int]:
    clients: list[int] = (
        args.attention_clients if workload.startswith("attention") else args.clients
    )
    return clients


def _versions() -> dict[str, Any]:
    import torch

    names = [
        "torch",
        "fastapi",
        "uvicorn",
        "sentence-transformers",
        "transformers",
        "aiohttp",
    ]
    versions: dict[str, Any] = {name: importlib.metadata.version(name) for name in names}
    versions["cuda"] = torch.version.cuda
    versions["gpu"], versions["driver"] = gpu_and_driver()
    return versions


def _find(points: list[Point], server: str, workload: str, clients: int) -> Point | None:
    for point in points:
        if (point.server, point.workload, point.clients) == (server, workload, clients):
            return point
    return None


def targets(points: list[Point]) -> list[dict[str, Any]]:
    """Issue 6's targets, each with the measured figures beside it."""
    short64 = _find(points, "ours", "short", 64)
    naive64 = _find(points, "naive", "short", 64)
    passage64 = _find(points, "ours", "passage", 64)
    short1 = _find(points, "ours", "short", 1)
    eager1 = _find(points, "ours-graphs-off", "short", 1)
    sparse1k = [p for p in points if p.server == "ours" and p.workload == "attention-1k"]
    rows: list[dict[str, Any]] = []
    if short64 and naive64:
        rows.append(
            {
                "target": "short sentences, 64 clients: >= 10,000 req/s, P99 <= 25 ms, >= 150x naive",
                "measured": f"{short64.throughput_rps:.0f} req/s, P99 {short64.p99_ms:.1f} ms, "
                f"{short64.throughput_rps / naive64.throughput_rps:.1f}x naive",
                "met": short64.throughput_rps >= 10_000
                and short64.p99_ms <= 25
                and short64.throughput_rps >= 150 * naive64.throughput_rps,
            }
        )
    if passage64:
        rows.append(
            {
                "target": "passages, 64 clients: >= 3,000 req/s",
                "measured": f"{passage64.throughput_rps:.0f} req/s",
                "met": passage64.throughput_rps >= 3_000,
            }
        )
    if short1 and eager1:
        rows.append(
            {
                "target": "1 client short sentence: P50 <= 3 ms; graphs >= 2x lower P50 than eager",
                "measured": f"P50 {short1.p50_ms:.2f} ms with graphs, {eager1.p50_ms:.2f} ms "
                f"eager ({eager1.p50_ms / short1.p50_ms:.2f}x)",
                "met": short1.p50_ms <= 3 and eager1.p50_ms >= 2 * short1.p50_ms,
            }
        )
    if sparse1k:
        best = max(sparse1k, key=lambda p: p.throughput_rps)
        rows.append(
            {
                "target": "attention 1x16x1024x64: > 6,807 QPS with P99 <= 5 ms",
                "measured": f"best {best.throughput_rps:.0f} QPS at {best.clients} clients, "
                f"P99 {best.p99_ms:.1f} ms",
                "met": any(p.throughput_rps > 6_807 and p.p99_ms <= 5 for p in sparse1k),
            }
        )
    return rows


def ratios(points: list[Point]) -> dict[str, float]:
    """ours / naive, graphs on / off, front-ends / one process throughput; sparse / dense
    attention throughput."""
    out: dict[str, float] = {}
    others = (
        ("naive", "ours/naive"),
        ("ours-graphs-off", "graphs/eager"),
        ("ours-1-process", "frontends/1-process"),
    )
    for point in points:
        if point.server != "ours":
            continue
        key = f"{point.workload}@{point.clients}"
        for other, label in others:
            if point.workload.startswith("attention"):
                label = "sparse/dense"
            match = _find(points, other, point.workload, point.clients)
            if match and match.throughput_rps > 0:
                out[f"{label} throughput {key}"] = point.throughput_rps / match.throughput_rps
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--clients", default="1,16,64,256")
    parser.add_argument("--attention-clients", default="1,16")
    parser.add_argument("--load-processes", type=int, default=6)
    parser.add_argument(
        "--frontends", type=int, default=6, help="HTTP front-end processes of ours (default 6)"
    )
    parser.add_argument(
        "--one-process-clients",
        default="1,64",
        help="client counts for ours in one process (default 1,64); empty: skip it",
    )
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument(
        "--skip-engine-floor",
        action="store_true",
        help="skip timing our engine alone (graphs on and off)",
    )
    parser.add_argument(
        "--skip-graphs-off",
        action="store_true",
        help="skip ours with graphs off and the dense backend (no graphs/eager, sparse/dense)",
    )
    parser.add_argument(
        "--py-spy",
        metavar="DIR",
        help="record py-spy profiles of our processes into DIR at --py-spy-points",
    )
    parser.add_argument(
        "--py-spy-points",
        default="ours-short-1,ours-short-64",
        help="SERVER-WORKLOAD-CLIENTS points to profile (default ours-short-1,ours-short-64)",
    )
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results"))
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    args.attention_clients = [int(c) for c in args.attention_clients.split(",")]
    args.py_spy_points = set(args.py_spy_points.split(","))
    one_process_clients = [int(c) for c in args.one_process_clients.split(",") if c]
    machine = _machine()
    embeddings = ["short", "passage"]
    attention = list(ATTENTION_SHAPES)
    servers: dict[str, Any] = {}
    # In a process of its own: CUDA must not start in this one, which forks the load processes.
    floor: list[dict[str, Any]] = []
    if not args.skip_engine_floor:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            floor = pool.apply(engine_floor)
    points = [] if args.skip_naive else run_naive(embeddings, args)
    # (server, config, workloads, client counts (None: --clients), whether it runs)
    ours_runs: list[tuple[str, dict[str, Any], list[str], list[int] | None, bool]] = [
        (
            "ours-1-process",
            runtime_config(backend="auto", graphs=True, frontends=1),
            embeddings,
            one_process_clients,
            bool(one_process_clients),
        ),
        (
            "ours-graphs-off",
            runtime_config(backend="dense", graphs=False, frontends=args.frontends),
            embeddings + attention,
            None,
            not args.skip_graphs_off,
        ),
        (
            "ours",
            runtime_config(backend="auto", graphs=True, frontends=args.frontends),
            embeddings + attention,
            None,
            True,
        ),
    ]
    for name, config, workloads, clients, wanted in ours_runs:
        if wanted:
            more, servers[name] = run_ours(name, config, workloads, args, clients)
            points += more
    ratio = ratios(points)
    for key, value in ratio.items():
        print(f"{key:>45}: x{value:.2f}")
    met = targets(points)
    for row in met:
        print(
            f"{'MET' if row['met'] else 'NOT MET'}: {row['target']} -- measured {row['measured']}"
        )
    now = datetime.datetime.now(datetime.UTC)
    record = {
        "benchmark": "serve-gpu",
        "date": now.isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "bench.serve_gpu", *sys.argv[1:]]),
        "machine": machine,
        "versions": _versions(),
        "load": {
            "seconds": args.seconds,
            "warmup": args.warmup,
            "load_processes": args.load_processes,
            "loopback": True,
            "workloads": {
                "short": "one short sentence per request",
                "passage": "one ~220-token passage per request",
                **{
                    name: f"1x16x{length}x64 bfloat16 q, k, v (safetensors), pattern {WINDOW}"
                    for name, length in ATTENTION_SHAPES.items()
                },
            },
        },
        "servers": servers,
        "engine_floor": floor,
        "results": [asdict(point) for point in points],
        "ratios": ratio,
        "targets": met,
    }
    out = Path(args.out) / f"serve-gpu-{now:%Y-%m-%dT%H%M%SZ}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
