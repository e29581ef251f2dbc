"""The kernel's persistent tile schedule, compiled for the host from the same header the kernel
uses (`tile_scheduler.h`): every (query block, head, batch) tile comes out exactly once, in the
order its comment promises. A schedule that skipped or repeated a tile would leave output rows
unwritten or written twice, which no CPU test of the wrapper can see."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sas_runtime.kernels import build

PROGRAM = r"""
#include <cstdio>
#include <cstdlib>

#include "tile_scheduler.h"

// Prints the schedule's tiles in order, one "m_block head batch" line each.
int main(int argc, char** argv) {
  if (argc != 4) return 2;
  const sas::TileScheduler scheduler{std::atoi(argv[1]), std::atoi(argv[2]), std::atoi(argv[3])};
  for (int index = 0; index < scheduler.num_tiles(); ++index) {
    const sas::Tile tile = scheduler.tile(index);
    std::printf("%d %d %d\n", tile.m_block, tile.head, tile.batch);
  }
  return 0;
}
"""


@pytest.fixture(scope="module")
def schedule_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("c++")
    assert compiler is not None, "a C++ compiler is needed (the extension build needs one too)"
    work = tmp_path_factory.mktemp("tile-scheduler")
    source = work / "schedule.cpp"
    source.write_text(PROGRAM)
    binary = work / "schedule"
    subprocess.run(
        [
            compiler,
            "-std=c++17",
            "-O1",
            f"-I{build.CSRC_DIR}",
            f"-I{build.cutlass_include_dir()}",
            f"-I{build.cuda_home(work) / 'include'}",  # CuTe's config includes the CUDA runtime API
            str(source),
            "-o",
            str(binary),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return binary


def _schedule(program: Path, m_blocks: int, heads: int, batch: int) -> list[tuple[int, ...]]:
    result = subprocess.run(
        [str(program), str(m_blocks), str(heads), str(batch)],
        check=True,
        capture_output=True,
        text=True,
    )
    return [tuple(map(int, line.split())) for line in result.stdout.splitlines()]


@pytest.mark.parametrize(("m_blocks", "heads", "batch"), [(1, 1, 1), (17, 8, 2), (128, 32, 1)])
def test_every_tile_once_query_blocks_descending_within_each_head(
    schedule_program: Path, m_blocks: int, heads: int, batch: int
) -> None:
    tiles = _schedule(schedule_program, m_blocks, heads, batch)
    expected = {(m, h, b) for m in range(m_blocks) for h in range(heads) for b in range(batch)}
    assert len(tiles) == len(expected)
    assert set(tiles) == expected
    # One (head, batch) at a time, its query blocks from the last (the longest causal rows) down.
    for start in range(0, len(tiles), m_blocks):
        run = tiles[start : start + m_blocks]
        assert len({(h, b) for _, h, b in run}) == 1
        assert [m for m, _, _ in run] == list(range(m_blocks - 1, -1, -1))
