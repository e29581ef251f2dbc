"""bench.kernel's sustained graph timing, with capture and replay stood in for (CPU), and its
result files."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench import kernel


@dataclass
class _Graph:
    """A stand-in graph whose replay logs its side and returns the time it would take."""

    side: str
    calls: int
    per_call_ms: float
    replays: list[str]

    def replay(self) -> float:
        self.replays.append(self.side)
        return self.calls * self.per_call_ms


def _stand_in(monkeypatch: pytest.MonkeyPatch, per_call_ms: dict[str, float | None]) -> list[str]:
    replays: list[str] = []

    def capture(fn: Callable[[], object], calls: int) -> _Graph | None:
        side = fn()  # each stand-in side returns its own name
        assert isinstance(side, str)
        per_call = per_call_ms[side]
        return None if per_call is None else _Graph(side, calls, per_call, replays)

    def event_ms(work: Callable[[], object]) -> float:
        elapsed = work()  # a stand-in replay returns its own time
        assert isinstance(elapsed, float)
        return elapsed

    monkeypatch.setattr(kernel, "capture_graph", capture)
    monkeypatch.setattr(kernel, "event_ms", event_ms)
    return replays


def test_each_side_is_soaked_alone_then_timed_and_later_passes_go_in_reverse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    replays = _stand_in(monkeypatch, {"ours": 1.0, "cudnn": 4.0})
    times = kernel.time_sustained_graphs_ms(
        {"ours": lambda: "ours", "cudnn": lambda: "cudnn"},
        replay_ms=20,
        soak_ms=50,
        samples=2,
        passes=2,
    )
    assert times == {"ours": 1.0, "cudnn": 4.0}
    # One single-call replay each sizes the graphs (20 and 5 calls: 20 ms a replay); then each
    # side alone: three replays of soak (60 ms >= 50), two timed; the second pass reversed.
    assert replays == [
        "ours",
        "cudnn",
        *["ours"] * 5,
        *["cudnn"] * 5,
        *["cudnn"] * 5,
        *["ours"] * 5,
    ]


def test_rotated_passes_put_every_side_in_every_place_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    replays = _stand_in(monkeypatch, {"base": 1.0, "v1": 2.0, "cudnn": 4.0})
    times = kernel.time_sustained_graphs_ms(
        {"base": lambda: "base", "v1": lambda: "v1", "cudnn": lambda: "cudnn"},
        replay_ms=4,
        soak_ms=4,
        samples=1,
        passes=3,
        rotate=True,
    )
    assert times == {"base": 1.0, "v1": 2.0, "cudnn": 4.0}
    # After the sizing replays, each side's soak and sample run back to back, one side after
    # another: the order of those runs is the order of the sides in each pass.
    order = [side for i, side in enumerate(replays[3:]) if i == 0 or replays[3 + i - 1] != side]
    assert order == ["base", "v1", "cudnn", "v1", "cudnn", "base", "cudnn", "base", "v1"]


def test_a_side_that_cannot_be_captured_is_none_and_the_others_are_still_timed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _stand_in(monkeypatch, {"ours": 2.0, "flex": None})
    times = kernel.time_sustained_graphs_ms(
        {"ours": lambda: "ours", "flex": lambda: "flex"}, samples=3, soak_ms=10
    )
    assert times == {"ours": 2.0, "flex": None}


def test_a_result_is_written_with_its_environment_first_and_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    taken = iter(range(2))
    monkeypatch.setattr(kernel, "environment", lambda command: {"taken": next(taken)})
    kernel.this_run_environment.cache_clear()
    # Cleared again however the test ends, so no later test reads this fake environment.
    request.addfinalizer(kernel.this_run_environment.cache_clear)
    out = tmp_path / "results" / "r.json"
    kernel.write_result(out, rows=[{"mask": "causal"}], summary=0.99)
    written = json.loads(out.read_text())
    assert list(written) == ["environment", "rows", "summary"]
    assert written["rows"] == [{"mask": "causal"}]
    # Rewritten after the next row, the result keeps the environment taken at the first write.
    kernel.write_result(out, rows=[{"mask": "causal"}, {"mask": "window-1024"}])
    assert json.loads(out.read_text())["environment"] == {"taken": 0}
    kernel.write_result(None, rows=[])  # no --out: nothing to write, no error


def test_problems_draw_inputs_once_per_shape_and_go_through_every_mask(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drawn: list[tuple[int, int]] = []

    def inputs_for(seq_len: int, head_dim: int, heads: int) -> list[object]:
        drawn.append((head_dim, seq_len))
        return [object()] * 3

    monkeypatch.setattr(kernel, "inputs_for", inputs_for)
    monkeypatch.setattr(
        kernel, "masks_for", lambda heads, seq_len, names: {name: object() for name in names}
    )
    rows = [
        (p.head_dim, p.seq_len, p.mask_name)
        for p in kernel.problems("512,1024", "128,64", 2, "causal,random-0.5")
    ]
    assert drawn == [(128, 512), (128, 1024), (64, 512), (64, 1024)]
    assert rows == [(d, s, m) for d, s in drawn for m in ("causal", "random-0.5")]


def test_a_time_ratio_needs_both_sides() -> None:
    assert kernel.time_ratio(3.0, 2.0) == pytest.approx(1.5)
    assert kernel.time_ratio(None, 2.0) is None
    assert kernel.time_ratio(3.0, None) is None
