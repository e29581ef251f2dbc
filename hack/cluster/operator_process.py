"""Run our operator as a local process against a local cluster (kwok runs no containers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hack.cluster.cluster import ClusterError, die_with_parent, free_port, http_ok, log_tail
from hack.cluster.kube import WaitTimeout, wait_for

HEALTH_PORT_VARIABLE = "SAS_OPERATOR_HEALTH_PORT"
METRICS_PORT_VARIABLE = "SAS_OPERATOR_METRICS_PORT"


@dataclass
class OperatorProcess:
    """`python -m sas_operator` with the chart's environment and a kubeconfig of the chart's user.

    The health and metrics ports are replaced by free ones so that clusters can run side by side.
    """

    kubeconfig: Path
    environment: Mapping[str, str]
    log: Path
    health_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> None:
        """Start the operator and (unless `wait` is False) wait until its /healthz answers."""
        env = {
            **os.environ,
            **self.environment,
            "KUBECONFIG": str(self.kubeconfig),
            HEALTH_PORT_VARIABLE: str(self.health_port),
            METRICS_PORT_VARIABLE: str(self.metrics_port),
        }
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sas_operator"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        process = self.process
        if not wait:
            return

        def healthy() -> bool:
            if process.poll() is not None:
                raise ClusterError(
                    f"the operator exited with {process.returncode}; {self.log}:\n{self.log_tail()}"
                )
            return http_ok(f"http://127.0.0.1:{self.health_port}/healthz")

        try:
            wait_for(f"the operator's /healthz on port {self.health_port}", healthy, timeout=60)
        except (ClusterError, WaitTimeout):
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM and wait for a clean exit (SIGKILL after 20 s)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL at once, wherever the operator is in its work (a crash)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log, lines)
