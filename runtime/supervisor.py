"""The multi-process runtime (`server.frontends` > 1): one engine process and N HTTP front-ends.

`python -m sas_runtime serve` becomes this supervisor: it starts `sas_runtime engine` (the
model, the batcher, the GPU) and `sas_runtime frontend` N times (each binds the same port with
SO_REUSEPORT, so the kernel spreads connections over them), then watches them:

- SIGTERM or SIGINT: each front-end drains (readiness off, new work 503, in-flight work
  finishes); once all have exited, the engine stops; exit 0. A second signal is passed on, and
  front-ends then exit at once.
- A child exits on its own (the engine failed to start, a crash): the others are stopped and
  the supervisor exits with that child's status, so the container restarts.

The children run in their own sessions (a terminal's Ctrl-C reaches the supervisor only) and
stop by themselves when the supervisor is gone. Socket and metric files live in a private
temporary directory, removed at exit.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from sas_runtime.metrics import MULTIPROCESS_ENV

__all__ = ["RuntimeCommand", "Supervisor"]

logger = logging.getLogger("sas_runtime")

_POLL_SECONDS = 0.05
_ENGINE_STOP_SECONDS = 30.0


@dataclass(frozen=True)
class RuntimeCommand:
    """What `serve` was asked for, passed on to the child processes."""

    config: str
    host: str
    port: int
    engine: str
    text_encoder: str
    log_level: str
    frontends: int


class Supervisor:
    """Starts and watches the engine process and the front-end processes."""

    def __init__(self, command: RuntimeCommand) -> None:
        self._command = command
        self._signals = 0
        self._signalled: set[int] = set()  # front-ends the signal was passed to
        self._frontends: list[subprocess.Popen[bytes]] = []
        self._engine: subprocess.Popen[bytes] | None = None

    def run(self) -> int:
        """Serve until told to stop or a child fails; the exit status for the process."""
        workdir = Path(tempfile.mkdtemp(prefix="sas-runtime-"))
        metrics_dir = workdir / "metrics"
        metrics_dir.mkdir()
        address = str(workdir / "engine.sock")
        env = os.environ | {MULTIPROCESS_ENV: str(metrics_dir)}
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self._engine = self._start(["engine", "--engine", self._command.engine], address, env)
            for _ in range(self._command.frontends):
                if self._signals:
                    break  # told to stop before every front-end was up: start no more
                self._frontends.append(
                    self._start(
                        [
                            "frontend",
                            "--host",
                            self._command.host,
                            "--port",
                            str(self._command.port),
                            "--text-encoder",
                            self._command.text_encoder,
                        ],
                        address,
                        env,
                    )
                )
            logger.info(
                "engine process %d, %d front-end processes on port %d",
                self._engine.pid,
                len(self._frontends),
                self._command.port,
            )
            return self._watch()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            shutil.rmtree(workdir, ignore_errors=True)

    def _start(
        self, arguments: list[str], address: str, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        command = self._command
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "sas_runtime", *arguments),
                *("--address", address, "--config", command.config),
                *("--log-level", command.log_level),
            ],
            env=env,
            start_new_session=True,
        )

    def _on_signal(self, sig: int, _: FrameType | None) -> None:
        self._signals += 1
        logger.info("received %s: draining the front-ends", signal.Signals(sig).name)
        for process in self._frontends:
            self._pass_signal(process)

    def _pass_signal(self, frontend: subprocess.Popen[bytes]) -> None:
        """SIGTERM a front-end that still runs, and remember that it was told."""
        if frontend.poll() is None:
            frontend.send_signal(signal.SIGTERM)
            self._signalled.add(frontend.pid)

    def _watch(self) -> int:
        engine = self._engine
        assert engine is not None
        while True:
            time.sleep(_POLL_SECONDS)
            if self._signals:
                # One that started as the signal came (not yet listed) still has to drain.
                for process in self._frontends:
                    if process.pid not in self._signalled:
                        self._pass_signal(process)
            if engine.poll() is not None:
                logger.error("the engine process exited with %d", engine.returncode)
                return engine.returncode or 1
            for process in self._frontends:
                if process.poll() is not None and not self._signals:
                    logger.error(
                        "front-end process %d exited with %d", process.pid, process.returncode
                    )
                    return process.returncode or 1
            if self._signals and all(p.poll() is not None for p in self._frontends):
                # One that the passed-on signal met while it was exiting anyway ended by it.
                failed = [
                    p.returncode
                    for p in self._frontends
                    if p.returncode and p.returncode != -signal.SIGTERM
                ]
                engine.send_signal(signal.SIGTERM)
                try:
                    engine.wait(_ENGINE_STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    logger.error("the engine process did not stop: killing it")
                return failed[0] if failed else 0

    def _stop_all(self) -> None:
        """Whatever still runs: SIGTERM, then SIGKILL after a grace."""
        children = [p for p in (*self._frontends, self._engine) if p is not None]
        for process in children:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        give_up = time.monotonic() + 5
        for process in children:
            try:
                process.wait(max(give_up - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
