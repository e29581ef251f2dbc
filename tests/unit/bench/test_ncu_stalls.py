"""Stall reasons per SASS instruction, read from Nsight Compute's source page (CSV)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.ncu_stalls import load, main

HEADER = (
    '"Address","Source","Warp Stall Sampling (All Samples)","stall_barrier","stall_wait",'
    '"stall_barrier (Not Issued)","stall_wait (Not Issued)"'
)


def _write(path: Path, rows: list[str]) -> Path:
    kernel = '"Kernel Name","void sas::block_sparse_fwd_kernel<128>(Args)",'
    path.write_text("\n".join([kernel, HEADER, *rows]) + "\n")
    return path


def test_offsets_count_from_the_kernels_first_instruction(tmp_path: Path) -> None:
    csv_path = _write(
        tmp_path / "sass.csv",
        [
            '"0x7f0000001010","  WARPGROUP.DEPBAR.LE gsb0, 0x0","1,200","1,000","200","900","150"',
            '"0x7f0000001000","  LDG.E R2, desc[UR6][R2.64]","30","0","30","0","25"',
        ],
    )
    kernel, instructions = load(csv_path)
    assert kernel == "void sas::block_sparse_fwd_kernel<128>(Args)"
    assert [i.offset for i in instructions] == [0x0, 0x10]
    assert instructions[1].source == "WARPGROUP.DEPBAR.LE gsb0, 0x0"
    # The "(Not Issued)" columns are a subset of the samples, not more of them.
    assert instructions[1].stalls == {"barrier": 1000.0, "wait": 200.0}


def test_report_ranks_reasons_and_their_instructions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = _write(
        tmp_path / "sass.csv",
        [
            '"0x1000","HGMMA.64x128x16.F32.BF16 R24","10","0","10","0","0"',
            '"0x1010","WARPGROUP.DEPBAR.LE gsb0, 0x1","60","60","0","0","0"',
            '"0x1020","WARPGROUP.DEPBAR.LE gsb0, 0x0","30","30","0","0","0"',
        ],
    )
    assert main([str(csv_path), "--top", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(": 100 sampled warps")
    assert lines[1].split() == ["barrier", "90", "90.0%"]
    assert lines[2].split() == ["60", "60.0%", "/*0010*/", "WARPGROUP.DEPBAR.LE", "gsb0,", "0x1"]
    assert lines[3].split() == ["wait", "10", "10.0%"]
    assert len(lines) == 5


def test_a_file_that_is_not_the_source_page_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "details.csv"
    path.write_text('"ID","Kernel Name","Metric Name"\n"0","k","Duration"\n')
    with pytest.raises(ValueError, match="no 'Address' header"):
        load(path)
