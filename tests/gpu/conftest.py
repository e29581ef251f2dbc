"""GPU-only fixtures: build (or find) the kernel extension once per session and load it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sas_runtime.kernels import ops
from sas_runtime.kernels.build import run_build_subprocess


@pytest.fixture(scope="session")
def kernels_loaded(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Loads the extension: $SAS_KERNEL_LIBRARY if set, else a fresh JIT build."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("needs an H100 (compute capability 9.0)")
    configured = os.environ.get("SAS_KERNEL_LIBRARY")
    library = (
        Path(configured) if configured else run_build_subprocess(tmp_path_factory.mktemp("kernels"))
    )
    reason = ops.load_library(library)
    assert reason is None, reason
