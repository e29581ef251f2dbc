"""The supervisor's signal handling, with stand-in children (no model, no sockets)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from sas_runtime.supervisor import RuntimeCommand, Supervisor

CHILD = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "print('up', flush=True)\n"
    "time.sleep(20)\n"
)
"""A child that exits 0 on SIGTERM, and by itself after 20 s."""


class _SignalledWhileAFrontendStarts(Supervisor):
    """Children are CHILD; SIGTERM reaches the supervisor while its first front-end starts,
    after the process exists and before the supervisor has listed it."""

    def __init__(self, command: RuntimeCommand) -> None:
        super().__init__(command)
        self.started: list[subprocess.Popen[bytes]] = []

    def _start(
        self, arguments: list[str], address: str, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, start_new_session=True
        )
        assert child.stdout is not None
        child.stdout.readline()  # its handler is in place
        if arguments[0] == "frontend" and not self._signals:
            self._on_signal(signal.SIGTERM, None)
        self.started.append(child)
        return child


def test_a_signal_while_a_frontend_starts_still_drains_it_and_starts_no_more() -> None:
    command = RuntimeCommand(
        config="unused.yaml",
        host="127.0.0.1",
        port=0,
        engine="unused",
        text_encoder="unused",
        log_level="info",
        frontends=3,
    )
    supervisor = _SignalledWhileAFrontendStarts(command)
    began = time.monotonic()
    assert supervisor.run() == 0
    assert time.monotonic() - began < 10  # not the children's own 20 s
    # The engine and the one front-end, both stopped by SIGTERM.
    assert [p.returncode for p in supervisor.started] == [0, 0]
