from __future__ import annotations

import pytest

from sas_runtime.rate_limit import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_is_admitted_at_once_then_refused_with_the_wait() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    assert [bucket.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_acquire() == pytest.approx(0.1)


def test_refills_at_the_rate_up_to_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=4, burst=2, clock=clock)
    bucket.try_acquire()
    bucket.try_acquire()
    clock.now += 0.25
    assert bucket.tokens == pytest.approx(1.0)
    clock.now += 100
    assert bucket.tokens == pytest.approx(2.0)
    assert bucket.try_acquire() == 0.0


def test_partial_refill_reports_the_remaining_wait() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=1, clock=clock)
    bucket.try_acquire()
    clock.now += 0.2
    assert bucket.try_acquire() == pytest.approx(0.3)


def test_sustained_rate_matches_the_configured_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=50, burst=5, clock=clock)
    admitted = 0
    for _ in range(10_000):
        clock.now += 0.001
        admitted += bucket.try_acquire() == 0.0
    assert admitted == pytest.approx(5 + 50 * 10, abs=1)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_rejects_impossible_settings(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="token bucket"):
        TokenBucket(rate=rate, burst=burst)
