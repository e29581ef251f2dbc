"""bench.kernel's paired random masks (bench.kernel_pairs): masks the pair kernel may run."""

from __future__ import annotations

from bench.kernel import random_mask
from sas_runtime.kernels import ops


def test_paired_random_masks_share_blocks_in_pairs_at_their_density() -> None:
    mask = random_mask(4, 4096, 0.5, seed=1, device="cpu", paired=True)
    assert ops.pairs_share_blocks(mask)
    visited = mask.full_kv_num_blocks.sum().item()
    assert 0.4 < visited / (4 * 32 * 32) < 0.6


def test_unpaired_random_masks_do_not_share_blocks_in_pairs() -> None:
    assert not ops.pairs_share_blocks(random_mask(4, 4096, 0.5, seed=1, device="cpu"))
