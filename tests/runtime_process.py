"""A real runtime process for integration tests and the demo: `python -m sas_runtime serve` on
a free loopback port, with the engine under test."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from hack.cluster.cluster import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_ENGINE = "sas_runtime.model_engine:build_engine"
FAKE_ENGINE = "tests.fake_engine:build_fake_engine"
SLOW_FAKE_ENGINE = "tests.fake_engine:build_slow_fake_engine"
TEXT_ENCODERS = {
    REAL_ENGINE: "sas_runtime.model_engine:build_text_encoder",
    FAKE_ENGINE: "tests.fake_engine:build_fake_text_encoder",
    SLOW_FAKE_ENGINE: "tests.fake_engine:build_fake_text_encoder",
}
"""The tokenizer that front-end processes (server.frontends > 1) load for each engine."""


def engine_under_test() -> str:
    """The real engine (sas_runtime.model_engine, all-MiniLM-L6-v2) where it imports, else the
    fake one."""
    try:
        importlib.import_module("sas_runtime.model_engine")
    except ImportError:
        return FAKE_ENGINE
    return REAL_ENGINE


class RuntimeStartError(Exception):
    """The process exited or never became ready; the message holds its output."""


@dataclass
class RuntimeProcess:
    """`python -m sas_runtime serve` running on a loopback port."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """Kill the process if it still runs."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


StartRuntime = Callable[..., RuntimeProcess]
"""The `start_runtime` fixture: `start(config, engine=...)` -> a ready RuntimeProcess."""


def process_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name: state, parent pid, ... (Linux);
    OSError when the process is gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_command(pid: int) -> list[str]:
    """The command line of `pid`, one item per argument (Linux /proc)."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def child_processes(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int(process_stat(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == pid:
                found.append(int(entry.name))
    return found


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    tree, todo = [], [pid]
    while todo:
        tree.append(current := todo.pop())
        todo += child_processes(current)
    return tree


def start_runtime_process(
    config: dict[str, Any], *, engine: str, workdir: Path, ready_within: float = 180
) -> RuntimeProcess:
    """Write `config` under `workdir`, start the runtime, wait until /readyz answers 200."""
    config_file = workdir / "runtime.yaml"
    config_file.write_text(yaml.safe_dump(config))
    log = workdir / "runtime.log"
    url = f"http://127.0.0.1:{free_port()}"
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *sys.path])}
    command = [sys.executable, "-m", "sas_runtime", "serve", "--config", str(config_file)]
    command += ["--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--engine", engine]
    command += ["--text-encoder", TEXT_ENCODERS[engine]]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
        )
    runtime = RuntimeProcess(process, url, log)
    give_up = time.monotonic() + ready_within
    while time.monotonic() < give_up:
        if process.poll() is not None:
            raise RuntimeStartError(
                f"runtime exited with {process.returncode}:\n{runtime.output()}"
            )
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return runtime
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    runtime.stop()
    raise RuntimeStartError(f"runtime not ready within {ready_within} s:\n{runtime.output()}")
