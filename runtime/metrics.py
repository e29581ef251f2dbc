"""The runtime's Prometheus metrics, in base units, each prefixed `sas_`, on a registry per app.

With several HTTP front-end processes the supervisor sets PROMETHEUS_MULTIPROC_DIR for every
process it starts: each process writes its values to files there, and whichever front-end
answers /metrics sums them (prometheus-client's multiprocess mode), so counts do not depend on
which process a scrape reaches.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

__all__ = ["CONTENT_TYPE_LATEST", "MULTIPROCESS_ENV", "RuntimeMetrics"]

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set (before prometheus-client is imported) in every process of a multi-process runtime."""

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class RuntimeMetrics:
    """Every metric the runtime exports. One instance per app, so apps in one process (tests)
    do not share counts; `render()` is the /metrics payload: this registry's, or in
    multi-process mode the sum over every process of the runtime (without the per-process
    CPU, memory and GC metrics, which describe one process only)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._multiprocess_dir = os.environ.get(MULTIPROCESS_ENV)
        if self._multiprocess_dir is None:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        r = self.registry
        self.request_seconds = Histogram(
            "sas_request_duration_seconds",
            "Time from receiving a request to sending its response, per endpoint.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "sas_requests",
            "Requests answered, by endpoint and HTTP status code.",
            ["endpoint", "code"],
            registry=r,
        )
        self.rejections = Counter(
            "sas_rejections",
            "Requests refused before or instead of running, by reason.",
            ["reason"],
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "sas_queue_wait_seconds",
            "Time a unit of work waited in the batcher's queue before its batch started.",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "sas_batch_size",
            "Units of work (texts, attention requests) per engine call.",
            ["kind"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "sas_queue_depth",
            "Requests admitted to the batcher and not yet answered.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.tokens = Counter(
            "sas_tokens",
            "Tokens processed: text tokens for embeddings, query rows for attention.",
            ["kind"],
            registry=r,
        )
        self.attention_flops = Counter(
            "sas_attention_flops",
            "Dense-equivalent floating-point operations of /v1/attention work (4·B·H·Lq·Lk·D).",
            registry=r,
        )
        self.attention_flops_per_second = Gauge(
            "sas_attention_flops_per_second",
            "Attention throughput achieved by the last /v1/attention batch (dense-equivalent).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.engine_seconds = Histogram(
            "sas_engine_duration_seconds",
            "Time of one engine call (a batch's forward pass).",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.backend_fallbacks = Counter(
            "sas_backend_fallbacks",
            "Times the engine serves with a backend other than the configured one, by reason.",
            ["reason"],
            registry=r,
        )
        self.backend_info = Gauge(
            "sas_backend_info",
            "The attention backend serving (value 1; one no longer serving: 0), with model, "
            "backend, pattern and device.",
            ["model", "backend", "pattern", "device"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.ready = Gauge(
            "sas_ready",
            "1 when the runtime is warm and accepting work, 0 while starting or draining.",
            registry=r,
            multiprocess_mode="livemin",
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric in this registry (multi-process: of
        every live process of the runtime)."""
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
