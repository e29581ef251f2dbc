"""Small kernel launches for compute-sanitizer (memcheck, racecheck), one per schedule: ragged
lengths, GQA, document and causal partial blocks, padding, an empty row. Exits non-zero on a
wrong result."""

from __future__ import annotations

import sys

import torch

from sas_runtime.block_mask import compile_block_mask
from sas_runtime.config import PatternConfig, PatternType
from sas_runtime.kernels import ops
from sas_runtime.kernels.reference import block_sparse_attention_reference


def main() -> int:
    reason = ops.load_library() or ops.unavailable_reason()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 1
    torch.manual_seed(0)
    device = torch.device("cuda")
    q = torch.randn(2, 4, 300, 128, device=device, dtype=torch.bfloat16)
    k, v = (torch.randn(2, 2, 300, 128, device=device, dtype=torch.bfloat16) for _ in range(2))
    documents = (torch.arange(300, device=device) >= 170).to(torch.int32).expand(2, 300)
    mask = compile_block_mask(
        PatternConfig(type=PatternType.DOCUMENT),
        batch=2,
        q_len=300,
        kv_len=300,
        kv_lengths=torch.tensor([300, 150], device=device),
        document_ids=documents.contiguous(),
        device=device,
    )
    ref, _ = block_sparse_attention_reference(q, k, v, block_mask=mask)
    worst = 0.0
    for carry in (False, True):  # both of the kernel's schedules
        out, _ = ops.block_sparse_attention(q, k, v, block_mask=mask, carry_last_product=carry)
        torch.cuda.synchronize()
        rmse = float((out.double().cpu() - ref).pow(2).mean().sqrt())
        print(f"carry_last_product={carry}: rmse {rmse:.2e}")
        worst = max(worst, rmse)
    return 0 if worst <= 1e-3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
