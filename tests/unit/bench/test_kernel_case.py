"""bench.kernel_case's CPU parts: which mask a `fixed-LAYOUT-N` name asks for."""

from __future__ import annotations

import pytest

from bench import kernel_case


def test_a_fixed_mask_name_gives_its_layout_and_block_count() -> None:
    assert kernel_case.parse_fixed_mask("fixed-shared-16") == ("shared", 16)
    assert kernel_case.parse_fixed_mask("fixed-random-4") == ("random", 4)


@pytest.mark.parametrize("name", ["fixed-diagonal-4", "fixed-band-x", "fixed-band"])
def test_a_bad_fixed_mask_is_refused_before_the_kernel_loads(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        kernel_case.main(["--mask", name])
    assert exit_info.value.code == 2
    assert "expected fixed-LAYOUT-N" in capsys.readouterr().err
