"""Fixtures shared by the runtime's tests: the fake engine, and a real runtime process."""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fake_engine import FakeEngine

TESTS_DIR = Path(__file__).resolve().parent
REAL_ENGINE = "sas_runtime.model_engine:build_engine"
FAKE_ENGINE = "fake_engine:build_fake_engine"


def engine_under_test() -> str:
    """The real engine (sas_runtime.model_engine, all-MiniLM-L6-v2) where it imports, else the
    fake one."""
    try:
        importlib.import_module("sas_runtime.model_engine")
    except ImportError:
        return FAKE_ENGINE
    return REAL_ENGINE


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@dataclass
class RuntimeProcess:
    """`python -m sas_runtime serve` running on a loopback port."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


StartRuntime = Callable[..., RuntimeProcess]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def start_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartRuntime]:
    """Start runtime processes (config as a dict, engine factory as module:function); each is
    killed when the test module is done, if still running."""
    started: list[RuntimeProcess] = []
    tmp_path = tmp_path_factory.mktemp("runtime")

    def start(config: dict[str, Any], *, engine: str, ready_within: float = 180) -> RuntimeProcess:
        index = len(started)
        config_file = tmp_path / f"runtime-{index}.yaml"
        config_file.write_text(yaml.safe_dump(config))
        log = tmp_path / f"runtime-{index}.log"
        port = _free_port()
        env = os.environ | {"PYTHONPATH": os.pathsep.join([str(TESTS_DIR), *sys.path])}
        command = [sys.executable, "-m", "sas_runtime", "serve", "--config", str(config_file)]
        command += ["--host", "127.0.0.1", "--port", str(port), "--engine", engine]
        with log.open("wb") as sink:
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
        runtime = RuntimeProcess(process, f"http://127.0.0.1:{port}", log)
        started.append(runtime)
        give_up = time.monotonic() + ready_within
        while time.monotonic() < give_up:
            if process.poll() is not None:
                pytest.fail(f"runtime exited with {process.returncode}:\n{runtime.output()}")
            try:
                if httpx.get(f"{runtime.url}/readyz", timeout=2).status_code == 200:
                    return runtime
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"runtime not ready within {ready_within} s:\n{runtime.output()}")

    yield start
    for runtime in started:
        if runtime.process.poll() is None:
            runtime.process.kill()
            runtime.process.wait()
