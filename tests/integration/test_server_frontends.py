"""The multi-process runtime (server.frontends > 1) as real processes: requests spread over the
front-ends reach one engine process, and the supervisor never leaves a process behind: a child
that fails takes the pod down with its status, and a killed supervisor's children stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from hack.cluster.cluster import free_port
from tests.fake_engine import FakeEngine
from tests.runtime_process import (
    FAKE_ENGINE,
    REPO_ROOT,
    TEXT_ENCODERS,
    RuntimeProcess,
    StartRuntime,
    child_processes,
    process_command,
    process_stat,
)

CONFIG: dict[str, Any] = {"server": {"device": "cpu", "frontends": 3}}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return process_stat(pid)[0] != "Z"


def _wait_gone(pids: list[int], within: float) -> list[int]:
    give_up = time.monotonic() + within
    while time.monotonic() < give_up:
        left = [pid for pid in pids if _alive(pid)]
        if not left:
            return []
        time.sleep(0.1)
    return [pid for pid in pids if _alive(pid)]


def _fake_vector(text: str) -> list[float]:
    engine = FakeEngine()
    vector: list[float] = engine.embed(engine.encode([text]))[0].tolist()
    return vector


def test_requests_over_fresh_connections_are_answered_and_counted_once(
    start_runtime: StartRuntime,
) -> None:
    runtime = start_runtime(CONFIG, engine=FAKE_ENGINE)
    children = child_processes(runtime.process.pid)
    assert len(children) == 4, "one engine and three front-end processes"
    for i in range(30):
        with httpx.Client(base_url=runtime.url, timeout=30) as client:
            response = client.post(
                "/v1/embeddings", json={"model": "fake-minilm", "input": [f"text {i}"]}
            )
            assert response.status_code == 200, response.text
            vector = response.json()["data"][0]["embedding"]
            assert vector == pytest.approx(_fake_vector(f"text {i}"), rel=1e-6)
            metrics = client.get("/metrics").text
    answered = [line for line in metrics.splitlines() if line.startswith("sas_requests_total{")]
    embeddings = [line for line in answered if '"/v1/embeddings"' in line and 'code="200"' in line]
    assert embeddings == ['sas_requests_total{code="200",endpoint="/v1/embeddings"} 30.0'], (
        "the counts of every front-end are summed"
    )
    assert "sas_ready 1.0" in metrics.splitlines()


def _serve(config: dict[str, Any], workdir: Path, engine: str) -> subprocess.Popen[bytes]:
    config_file = workdir / "runtime.yaml"
    config_file.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "sas_runtime", "serve", "--config", str(config_file)]
    command += ["--host", "127.0.0.1", "--port", str(free_port()), "--engine", engine]
    command += ["--text-encoder", TEXT_ENCODERS[FAKE_ENGINE]]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *sys.path])}
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
    )


def test_an_engine_that_cannot_start_stops_the_pod_with_its_reason(tmp_path: Path) -> None:
    process = _serve(CONFIG, tmp_path, "tests.fake_engine:nothing")
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1
    assert b"cannot build the engine" in output
    assert b"the engine process exited with 1" in output


@pytest.mark.parametrize("role", ["engine", "frontend"])
def test_a_crashed_child_takes_the_pod_down(start_runtime: StartRuntime, role: str) -> None:
    runtime = start_runtime(CONFIG, engine=FAKE_ENGINE)
    children = child_processes(runtime.process.pid)
    crashing = [pid for pid in children if process_command(pid)[3:4] == [role]]
    assert len(crashing) == (1 if role == "engine" else CONFIG["server"]["frontends"])
    os.kill(crashing[0], signal.SIGKILL)
    assert runtime.process.wait(timeout=30) != 0
    assert _wait_gone(children, within=10) == []
    said = "the engine process" if role == "engine" else f"front-end process {crashing[0]}"
    assert f"{said} exited with -9" in runtime.output()


def test_children_of_a_killed_supervisor_stop_by_themselves(start_runtime: StartRuntime) -> None:
    runtime: RuntimeProcess = start_runtime(CONFIG, engine=FAKE_ENGINE)
    children = child_processes(runtime.process.pid)
    assert len(children) == 4
    runtime.process.kill()
    runtime.process.wait()
    assert _wait_gone(children, within=15) == [], "front-ends and engine outlived the supervisor"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{runtime.url}/readyz", timeout=2)
