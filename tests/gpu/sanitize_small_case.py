"""Small kernel launches for compute-sanitizer (memcheck, racecheck), one per schedule: ragged
lengths, GQA, document and causal partial blocks, padding, an empty row; then a window mask
with a few more tiles than SMs, so that CTAs take a second tile and reuse the shared-memory
slots a first tile used (the posted tile's slot, the Q and K/V stages); then the same shape
dense, also with CTAs in pairs (pair_tiles: each K/V block loaded half by each CTA of a
cluster, into both). Exits non-zero on a wrong result."""

from __future__ import annotations

import sys

import torch

from sas_runtime.block_mask import BlockMask, compile_block_mask
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
    worst = worst_rmse(q, k, v, mask, "document")
    # A second tile for a few CTAs: 2 x ceil((SMs + 8) / 12) heads of 6 query blocks (small
    # rows keep the float64 reference cheap under the sanitizer).
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    heads = -(-(sms + 8) // 12)
    q, k, v = (
        torch.randn(2, heads, 768, 128, device=device, dtype=torch.bfloat16) for _ in range(3)
    )
    mask = compile_block_mask(
        PatternConfig(type=PatternType.WINDOW, window=128),
        batch=2,
        q_len=768,
        kv_len=768,
        device=device,
    )
    worst = max(worst, worst_rmse(q, k, v, mask, "window, more tiles than SMs"))
    dense = compile_block_mask(PatternConfig(), batch=2, q_len=768, kv_len=768, device=device)
    worst = max(worst, worst_rmse(q, k, v, dense, "dense, CTAs in pairs", pair_tiles=True))
    return 0 if worst <= 1e-3 else 1


def worst_rmse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockMask,
    label: str,
    *,
    pair_tiles: bool = False,
) -> float:
    """The kernel's rmse against the float64 reference, the worse of its two schedules."""
    ref, _ = block_sparse_attention_reference(q, k, v, block_mask=mask)
    worst = 0.0
    for carry in (False, True):  # both of the kernel's schedules
        out, _ = ops.block_sparse_attention(
            q, k, v, block_mask=mask, carry_last_product=carry, pair_tiles=pair_tiles
        )
        torch.cuda.synchronize()
        rmse = float((out.double().cpu() - ref).pow(2).mean().sqrt())
        print(f"{label}, carry_last_product={carry}: rmse {rmse:.2e}")
        worst = max(worst, rmse)
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
