"""The op wrapper without a build: import is safe, reasons are readable, bad masks refused."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sas_runtime.block_mask import BlockMask, ElementMask, compile_block_mask
from sas_runtime.config import PatternConfig, PatternType
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


def test_long_tiles_first_order_takes_length_classes_in_the_kernels_order() -> None:
    """Causal, 8 query blocks, 2 heads (the mask broadcasts over them): tile i is head i // 8,
    query block 7 - i % 8, visiting 8 - i % 8 key blocks."""
    mask = compile_block_mask(
        PatternConfig(type=PatternType.CAUSAL), batch=1, q_len=1024, kv_len=1024
    )
    order = ops.long_tiles_first_order(mask, batch=1, heads=2, q_blocks=8)
    assert order.dtype == torch.int32
    # 8 blocks; 4-7; 2-3; 1: each class head 0 first, query blocks descending.
    assert order.tolist() == [0, 8, 1, 2, 3, 4, 9, 10, 11, 12, 5, 6, 13, 14, 7, 15]


def test_grouped_long_tiles_first_order_takes_the_classes_one_group_of_heads_at_a_time() -> None:
    """The same tiles over 4 heads, in groups of 2: heads 0-1's classes, then heads 2-3's."""
    mask = compile_block_mask(
        PatternConfig(type=PatternType.CAUSAL), batch=1, q_len=1024, kv_len=1024
    )
    order = ops.long_tiles_first_order(mask, batch=1, heads=4, q_blocks=8, heads_per_group=2)
    first_group = [0, 8, 1, 2, 3, 4, 9, 10, 11, 12, 5, 6, 13, 14, 7, 15]
    assert order.tolist() == first_group + [tile + 16 for tile in first_group]
    everything = ops.long_tiles_first_order(mask, batch=1, heads=4, q_blocks=8, heads_per_group=4)
    assert torch.equal(everything, ops.long_tiles_first_order(mask, batch=1, heads=4, q_blocks=8))


def test_sorted_tail_order_keeps_the_kernels_order_and_sorts_only_the_last_tiles() -> None:
    """The causal tiles over 2 heads (each head's 8 visiting 8 down to 1 key blocks): the first
    4 in the kernel's order, the last 12 (head 0's last 4, all of head 1's) longest first, ties
    in the kernel's order; a tail longer than the tiles sorts them all."""
    mask = compile_block_mask(
        PatternConfig(type=PatternType.CAUSAL), batch=1, q_len=1024, kv_len=1024
    )
    order = ops.long_tiles_first_order(mask, batch=1, heads=2, q_blocks=8, sorted_tail=12)
    assert order.dtype == torch.int32
    assert order.tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 4, 12, 5, 13, 6, 14, 7, 15]
    everything = ops.long_tiles_first_order(mask, batch=1, heads=2, q_blocks=8, sorted_tail=99)
    assert everything.tolist() == [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15]


def test_long_first_puts_the_longest_tiles_before_the_sorted_tail() -> None:
    """The same causal tiles (mean 4.5 blocks): those of 7 or 8 blocks (>= 1.5 x the mean) go
    first, longest first; the rest keep the kernel's order with their last 4 sorted."""
    mask = compile_block_mask(
        PatternConfig(type=PatternType.CAUSAL), batch=1, q_len=1024, kv_len=1024
    )
    order = ops.long_tiles_first_order(
        mask, batch=1, heads=2, q_blocks=8, sorted_tail=4, long_first=1.5
    )
    assert order.tolist() == [0, 8, 1, 9, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15]


def test_options_of_different_orders_are_refused_together() -> None:
    mask = compile_block_mask(
        PatternConfig(type=PatternType.CAUSAL), batch=1, q_len=1024, kv_len=1024
    )
    shape = {"batch": 1, "heads": 2, "q_blocks": 8}
    with pytest.raises(ValueError, match="two different orders"):
        ops.long_tiles_first_order(mask, **shape, sorted_tail=4, heads_per_group=1)
    with pytest.raises(ValueError, match="long_first goes with sorted_tail"):
        ops.long_tiles_first_order(mask, **shape, long_first=2.0)


def test_the_wrappers_order_sorts_the_last_waves_after_the_longest_tiles() -> None:
    """Causal over 2 heads on a 3-SM device: no tile visits 2 x the mean (4.5) blocks, so the
    kernel's order stands but for its last 4 waves (12 tiles), longest first."""
    mask = compile_block_mask(
        PatternConfig(type=PatternType.CAUSAL), batch=1, q_len=1024, kv_len=1024
    )
    order = ops.wrapper_tile_order(mask, batch=1, heads=2, q_blocks=8, sms=3)
    assert (ops.SORTED_TAIL_WAVES, ops.LONG_FIRST) == (4, 2.0)
    assert order.tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 4, 12, 5, 13, 6, 14, 7, 15]


@pytest.mark.parametrize("long_first", [None, 1.5])
def test_sorted_tail_orders_match_a_plain_reading_of_the_rule(long_first: float | None) -> None:
    """Random masks over 4 heads x 24 query blocks, against the rule spelled out in Python."""
    torch.manual_seed(5)
    for density in (0.1, 0.3, 0.8):
        visited = torch.rand(1, 4, 24, 24) < density
        mask = BlockMask.from_block_grids(
            partial_blocks=torch.zeros_like(visited),
            full_blocks=visited,
            element_mask=ElementMask(),
            block_size=128,
            q_len=24 * 128,
            kv_len=24 * 128,
        )
        counts = (mask.kv_num_blocks + mask.full_kv_num_blocks).flip(-1).reshape(-1).tolist()
        mean = sum(counts) / len(counts)
        is_long = [long_first is not None and c >= long_first * mean for c in counts]
        rest = [t for t in range(len(counts)) if not is_long[t]]
        long = [t for t in range(len(counts)) if is_long[t]]
        expected = sorted(long, key=counts.__getitem__, reverse=True)
        expected += rest[:-20] + sorted(rest[-20:], key=counts.__getitem__, reverse=True)
        order = ops.long_tiles_first_order(
            mask, batch=1, heads=4, q_blocks=24, sorted_tail=20, long_first=long_first
        )
        assert order.tolist() == expected


def test_the_wrappers_order_compiles_with_a_static_shape() -> None:
    """torch.compile (and graph capture) take the order as traced: no shape in it depends on
    the counts, so the op's check of its length holds without a guard on the data."""
    mask = compile_block_mask(
        PatternConfig(type=PatternType.CAUSAL), batch=1, q_len=2100, kv_len=2100
    )

    @torch.compile(fullgraph=True, backend="eager")
    def order_for_272_tiles() -> torch.Tensor:
        order = ops.wrapper_tile_order(mask, batch=2, heads=8, q_blocks=17, sms=4)
        torch._check(order.shape == (272,))  # type: ignore[no-untyped-call]
        return order

    eager = ops.wrapper_tile_order(mask, batch=2, heads=8, q_blocks=17, sms=4)
    assert torch.equal(order_for_272_tiles(), eager)
    assert sorted(eager.tolist()) == list(range(272))


def test_no_tile_order_while_the_keys_span_under_16_blocks() -> None:
    mask = compile_block_mask(PatternConfig(), batch=64, q_len=1920, kv_len=1920)
    q = torch.zeros(64, 12, 1920, 64, dtype=torch.bfloat16)
    assert ops._tile_order(mask, q, kv_len=1920) is None


@pytest.mark.parametrize(
    ("head_dim", "kv_blocks", "carries"),
    [(128, 256, True), (128, 512, True), (128, 255, False), (128, 32, False), (64, 256, False)],
)
def test_the_last_product_is_carried_only_for_long_d128_keys(
    head_dim: int, kv_blocks: int, carries: bool
) -> None:
    """Run 9 measured the carried product faster only at D128 with 256 key blocks or more."""
    assert ops.carries_last_product(head_dim, kv_blocks) is carries


def _grids_mask(full: torch.Tensor, partial: torch.Tensor | None = None) -> BlockMask:
    blocks = full.shape[-1]
    return BlockMask.from_block_grids(
        partial_blocks=torch.zeros_like(full) if partial is None else partial,
        full_blocks=full,
        element_mask=ElementMask(causal=partial is not None),
        block_size=128,
        q_len=full.shape[-2] * 128,
        kv_len=blocks * 128,
    )


def test_dense_masks_share_blocks_in_pairs_and_causal_ones_do_not() -> None:
    dense = compile_block_mask(PatternConfig(), batch=1, q_len=1024, kv_len=1024)
    causal = compile_block_mask(
        PatternConfig(type=PatternType.CAUSAL), batch=1, q_len=1024, kv_len=1024
    )
    assert ops.pairs_share_blocks(dense)
    assert not ops.pairs_share_blocks(causal)


def test_pairs_must_list_the_same_blocks_full_and_partial() -> None:
    torch.manual_seed(0)
    pairs = torch.rand(2, 3, 4, 16) < 0.4
    full = pairs.repeat_interleave(2, dim=2)  # query blocks 2 i and 2 i + 1 alike
    assert ops.pairs_share_blocks(_grids_mask(full))
    split = full.clone()
    split[1, 2, 5] = ~split[1, 2, 5]  # one block of one row differs from its pair
    assert not ops.pairs_share_blocks(_grids_mask(split))
    # The same blocks, one of them partial in one row of a pair only.
    column = int(full[0, 0, 0].nonzero()[0])
    partial = torch.zeros_like(full)
    partial[0, 0, 0, column] = True
    moved = full.clone()
    moved[0, 0, 0, column] = False
    assert not ops.pairs_share_blocks(_grids_mask(moved, partial))
    partial[0, 0, 1, column] = True
    moved[0, 0, 1, column] = False
    assert ops.pairs_share_blocks(_grids_mask(moved, partial))


def test_an_odd_count_of_query_blocks_has_no_pairs() -> None:
    full = torch.ones(1, 1, 3, 4, dtype=torch.bool)
    assert not ops.pairs_share_blocks(_grids_mask(full))


def test_pair_tiles_drop_the_tile_order() -> None:
    mask = compile_block_mask(PatternConfig(), batch=1, q_len=32768, kv_len=32768)
    q = torch.zeros(1, 2, 32768, 128, dtype=torch.bfloat16)
    arguments = ops.op_arguments(q, q, q, block_mask=mask, pair_tiles=True)
    assert arguments[-1] is True
    assert arguments[-3] is None


@pytest.mark.parametrize(
    ("head_dim", "q_len", "order", "message"),
    [
        (64, 256, False, "head_dim 128"),
        (128, 384, False, "even count"),
        (128, 256, True, "no tile_order"),
    ],
)
def test_the_fake_kernel_refuses_pairs_it_cannot_run(
    head_dim: int, q_len: int, order: bool, message: str
) -> None:
    mask = compile_block_mask(PatternConfig(), batch=1, q_len=q_len, kv_len=q_len)
    q = torch.zeros(1, 1, q_len, head_dim, dtype=torch.bfloat16)
    tiles = torch.arange(-(-q_len // 128), dtype=torch.int32) if order else None
    arguments = ops.op_arguments(q, q, q, block_mask=mask, pair_tiles=True)
    fake: Callable[..., object] = ops._block_sparse_attention_fwd_fake  # takes the op's arguments
    with pytest.raises(RuntimeError, match=message):
        # The wrapper drops the order under pairs: put one back past its tile_order and flags.
        fake(*arguments[:-3], tile_order=tiles, pair_tiles=True)
