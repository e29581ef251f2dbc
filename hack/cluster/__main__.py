"""Command line: `python -m hack.cluster build | up | down WORKDIR` (run from the repository root)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

from hack.cluster import tools
from hack.cluster.cluster import local_cluster


def _say(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


def build() -> None:
    seconds = tools.build_all()
    for tool in tools.ALL_TOOLS:
        print(tool.path)
    if seconds:
        _say(f"built in {seconds:.0f}s")


def up(workdir: Path | None) -> None:
    """Run a cluster in the foreground until Ctrl-C or SIGTERM, then stop it."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    with local_cluster(workdir, progress=_say) as cluster:
        _say(f"ready: export KUBECONFIG={cluster.admin_kubeconfig}  (Ctrl-C stops it)")
        with contextlib.suppress(KeyboardInterrupt):
            stopping.wait()
        _say("stopping")


def down(workdir: Path) -> None:
    """Stop the processes a cluster in `workdir` recorded (for one whose Python parent is gone)."""
    pids = workdir / "pids"
    if not pids.exists():
        _say(f"nothing recorded in {pids}")
        return
    for line in reversed(pids.read_text().splitlines()):
        pid, name = line.split(maxsplit=1)
        try:
            os.kill(int(pid), signal.SIGTERM)
            _say(f"stopped {name} (pid {pid})")
        except ProcessLookupError:
            pass
    pids.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m hack.cluster", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build the binaries (cached) and print their paths")
    up_parser = commands.add_parser("up", help="run a cluster until Ctrl-C")
    up_parser.add_argument("--workdir", type=Path, help="state folder (default: a temp dir)")
    down_parser = commands.add_parser("down", help="stop a cluster left running in WORKDIR")
    down_parser.add_argument("workdir", type=Path)
    args = parser.parse_args()
    if args.command == "build":
        build()
    elif args.command == "up":
        up(args.workdir)
    else:
        down(args.workdir)


if __name__ == "__main__":
    main()
