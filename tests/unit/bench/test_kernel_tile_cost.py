"""bench.kernel_tile_cost's CPU parts: masks whose every tile visits exactly n full blocks, laid
out three ways, and the per-tile/per-block fit."""

from __future__ import annotations

import pytest
import torch

from bench import kernel_tile_cost
from bench.kernel_tile_cost import (
    LAYOUTS,
    fit_tile_and_block_us,
    fixed_count_grid,
    fixed_count_mask,
)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_tile_visits_exactly_the_asked_number_of_blocks(layout: str) -> None:
    grid = fixed_count_grid(layout, heads=3, q_blocks=8, kv_blocks=8, count=5, seed=1, device="cpu")
    assert grid.shape == (1, 3, 8, 8)
    assert (grid.sum(dim=-1) == 5).all()


def test_shared_gives_every_query_block_of_a_head_the_same_blocks() -> None:
    grid = fixed_count_grid(
        "shared", heads=4, q_blocks=6, kv_blocks=16, count=3, seed=2, device="cpu"
    )
    assert (grid == grid[:, :, :1]).all()
    assert not all(torch.equal(grid[0, 0], grid[0, h]) for h in range(1, 4))


def test_band_starts_at_the_query_block_and_wraps() -> None:
    grid = fixed_count_grid("band", heads=1, q_blocks=4, kv_blocks=4, count=2, seed=0, device="cpu")
    expected = torch.tensor(
        [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1]], dtype=torch.bool
    )
    assert torch.equal(grid[0, 0], expected)


def test_random_draws_differ_between_query_blocks() -> None:
    grid = fixed_count_grid(
        "random", heads=1, q_blocks=16, kv_blocks=64, count=4, seed=3, device="cpu"
    )
    assert len({tuple(row.nonzero().flatten().tolist()) for row in grid[0, 0]}) > 1


def test_a_count_outside_the_key_blocks_is_refused() -> None:
    with pytest.raises(ValueError, match=r"not in 1\.\.8"):
        fixed_count_grid("band", heads=1, q_blocks=8, kv_blocks=8, count=9, seed=0, device="cpu")
    with pytest.raises(ValueError, match="unknown layout"):
        fixed_count_grid(
            "diagonal", heads=1, q_blocks=8, kv_blocks=8, count=2, seed=0, device="cpu"
        )


def test_the_mask_lists_full_blocks_only() -> None:
    mask = fixed_count_mask("random", heads=2, seq_len=1024, count=3, seed=4, device="cpu")
    assert (mask.full_kv_num_blocks == 3).all()
    assert (mask.kv_num_blocks == 0).all()


def test_the_fit_recovers_a_known_tile_and_block_cost() -> None:
    waves = 31.0
    counts = [4, 8, 16, 32]
    times_ms = [waves * (4.27 + c * 1.706) / 1000.0 for c in counts]
    tile_us, block_us = fit_tile_and_block_us(counts, times_ms, waves)
    assert tile_us == pytest.approx(4.27)
    assert block_us == pytest.approx(1.706)
    with pytest.raises(ValueError, match="two different block counts"):
        fit_tile_and_block_us([8, 8], [1.0, 1.1], waves)


def test_an_unknown_schedule_is_refused_before_the_kernel_loads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        kernel_tile_cost.main(["--schedules", "plain,pingpong"])
    assert exit_info.value.code == 2
    assert "unknown schedules ['pingpong']" in capsys.readouterr().err


def test_a_variant_without_its_own_namespace_is_refused_before_the_kernel_loads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        kernel_tile_cost.main(["--variant", "build/sas_kernels.so"])
    assert exit_info.value.code == 2
    assert "not a variant library" in capsys.readouterr().err
