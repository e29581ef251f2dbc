"""The op wrapper without a build: import is safe, reasons are readable, bad masks refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sas_runtime.block_mask import compile_block_mask
from sas_runtime.config import PatternConfig
from sas_runtime.kernels import ops


def test_a_missing_library_is_a_reason_not_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "sas_kernels.so"
    program = (
        "from pathlib import Path; from sas_runtime.kernels import ops; "
        f"print(ops.load_library(Path({str(missing)!r}))); print(ops.unavailable_reason())"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    loaded, unavailable = result.stdout.splitlines()
    assert loaded == f"sparse kernels not built (no library at {missing})"
    assert unavailable == loaded


def test_library_path_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAS_KERNEL_LIBRARY", "/opt/sas/sas_kernels.so")
    assert ops.library_path() == Path("/opt/sas/sas_kernels.so")


def test_masks_with_64_token_blocks_are_refused_before_the_kernel() -> None:
    mask = compile_block_mask(PatternConfig(block_size=64), batch=1, q_len=128, kv_len=128)
    q = torch.zeros(1, 1, 128, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="128-token blocks"):
        ops.block_sparse_attention(q, q, q, block_mask=mask)
