"""The serving benchmark's latency split: stage means read from two scrapes of our metrics."""

from __future__ import annotations

import pytest

from bench.serve_gpu import histogram_totals, stage_means
from sas_runtime.metrics import RuntimeMetrics


def test_stage_means_are_taken_between_two_scrapes() -> None:
    metrics = RuntimeMetrics()
    metrics.request_seconds.labels(endpoint="/v1/embeddings").observe(0.010)
    metrics.request_seconds.labels(endpoint="/metrics").observe(5.0)
    before = histogram_totals(metrics.render().decode())

    for seconds in (0.002, 0.004):
        metrics.request_seconds.labels(endpoint="/v1/embeddings").observe(seconds)
    metrics.request_seconds.labels(endpoint="/metrics").observe(7.0)
    metrics.queue_wait_seconds.labels(kind="embed").observe(0.0005)
    metrics.engine_seconds.labels(kind="embed").observe(0.001)
    for size in (1, 3):
        metrics.batch_size.labels(kind="embed").observe(size)
    means = stage_means(before, histogram_totals(metrics.render().decode()))

    assert means == pytest.approx(
        {"server_ms": 3.0, "queue_wait_ms": 0.5, "engine_ms": 1.0, "batch_size": 2.0}
    )


def test_a_stage_with_no_new_observations_is_left_out() -> None:
    metrics = RuntimeMetrics()
    metrics.engine_seconds.labels(kind="attend").observe(0.25)
    totals = histogram_totals(metrics.render().decode())
    assert totals["engine"] == pytest.approx((0.25, 1.0))
    assert stage_means(totals, totals) == {}
