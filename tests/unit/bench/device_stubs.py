"""Stand-in commands for the device scripts' CPU tests: each name becomes an executable script
first on PATH, and the environment those scripts run in."""

from __future__ import annotations

import os
from pathlib import Path


def stub_environment(tmp_path: Path, commands: dict[str, str]) -> dict[str, str]:
    """Writes `commands` (name -> script text) under tmp_path/bin and returns the environment
    that puts them first on PATH; the stand-ins log to STUB_LOG, results go to OUT, and
    SAS_CUTLASS_INCLUDE skips device_env.sh's installs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"nvidia-smi": "#!/bin/sh\necho stub GPU\n", **commands}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "STUB_LOG": str(tmp_path / "calls.log"),
        "OUT": str(tmp_path / "out"),
        "SAS_CUTLASS_INCLUDE": "/nonexistent",
    }
