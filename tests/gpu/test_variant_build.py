"""A variant build of the kernel (its own op and C++ namespace, as bench/kernel_variants.py and
`kernel_ab.sh` with SIDE_BY_SIDE=1 use it) runs beside the runtime's library in one process and
gives its result bit for bit: the same source, renamed, calls its own kernels."""

from __future__ import annotations

import pytest
import torch

from sas_runtime.block_mask import compile_block_mask
from sas_runtime.config import PatternConfig, PatternType
from sas_runtime.kernels import ops
from sas_runtime.kernels.build import run_build_subprocess

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("kernels_loaded")]


@pytest.fixture(scope="module")
def variant_loaded(tmp_path_factory: pytest.TempPathFactory) -> None:
    library = run_build_subprocess(
        tmp_path_factory.mktemp("variant"),
        {"SAS_KERNEL_DTYPES": "bf16"},
        op_namespace="sas_variant_check",
    )
    torch.ops.load_library(str(library))  # type: ignore[no-untyped-call]


@pytest.mark.usefixtures("variant_loaded")
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("carry_last_product", [False, True])
def test_a_variant_build_gives_the_runtimes_result_bit_for_bit(
    head_dim: int, carry_last_product: bool
) -> None:
    torch.manual_seed(head_dim)
    q, k, v = (
        torch.randn(2, 4, 1000, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3)
    )
    mask = compile_block_mask(
        PatternConfig(type=PatternType.CAUSAL, block_size=128),
        batch=2,
        q_len=1000,
        kv_len=1000,
        device=torch.device("cuda"),
    )
    arguments = ops.op_arguments(q, k, v, block_mask=mask, carry_last_product=carry_last_product)
    out, lse = torch.ops.sas.block_sparse_attention_fwd(*arguments)
    their_out, their_lse = torch.ops.sas_variant_check.block_sparse_attention_fwd(*arguments)
    torch.cuda.synchronize()
    assert torch.equal(out, their_out)
    assert torch.equal(lse, their_lse)
