"""The GPU and driver a benchmark ran on, for its result file."""

from __future__ import annotations

import subprocess

__all__ = ["gpu_and_driver"]


def gpu_and_driver() -> tuple[str | None, str | None]:
    """(name, driver version) of the first GPU as nvidia-smi reports them; None where there
    is no nvidia-smi or it fails."""
    try:
        line = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()[0]
        name, driver = (part.strip() for part in line.split(",", 1))
    except (FileNotFoundError, subprocess.CalledProcessError, IndexError, ValueError):
        return None, None
    return name, driver
