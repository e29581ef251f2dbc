"""Locate and run the security linters that `make lint-tools` installs under the cache.

checkov's dependency tree conflicts with the project's, so checkov and hadolint live in their
own venv, `$CACHE_DIR/lint-venv`, pinned by hack/lint/requirements.txt.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hack.cluster.tools import cache_dir

__all__ = ["checkov", "lint_tool", "lint_venv"]


def lint_venv() -> Path:
    """The linters' venv."""
    return cache_dir() / "lint-venv"


def lint_tool(name: str) -> Path:
    """A linter's executable; FileNotFoundError, saying how to install it, when it is missing."""
    path = lint_venv() / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not installed at {path}: run `make lint-tools`")
    return path


def checkov(target: Path, framework: str, skip_checks: Iterable[str] = ()) -> dict[str, Any]:
    """checkov's JSON report on one file (`kubernetes` or `dockerfile` framework), offline:
    `--skip-download` keeps it from fetching guidelines from its vendor's service."""
    command = [str(lint_tool("checkov")), "--file", str(target), "--framework", framework]
    if skips := ",".join(skip_checks):
        command += ["--skip-check", skips]
    result = subprocess.run(
        [*command, "--skip-download", "--output", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if not result.stdout.startswith(("{", "[")):
        raise RuntimeError(f"checkov gave no report (exit {result.returncode}): {result.stderr}")
    report: Any = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    (only,) = [r for r in reports if r.get("check_type") == framework]
    return dict(only)
