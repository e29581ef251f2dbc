from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sas_runtime.metrics import RuntimeMetrics

EXPECTED = {
    "sas_request_duration_seconds": "histogram",
    "sas_requests": "counter",
    "sas_rejections": "counter",
    "sas_queue_wait_seconds": "histogram",
    "sas_batch_size": "histogram",
    "sas_queue_depth": "gauge",
    "sas_tokens": "counter",
    "sas_attention_flops": "counter",
    "sas_attention_flops_per_second": "gauge",
    "sas_engine_duration_seconds": "histogram",
    "sas_backend_fallbacks": "counter",
    "sas_backend_info": "gauge",
    "sas_ready": "gauge",
}


def _families(metrics: RuntimeMetrics) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(metrics.render().decode())}


def test_every_runtime_metric_is_exported_with_its_type() -> None:
    metrics = RuntimeMetrics()
    metrics.request_seconds.labels(endpoint="/v1/embeddings").observe(0.01)
    metrics.requests.labels(endpoint="/v1/embeddings", code="200").inc()
    metrics.rejections.labels(reason="queue_full").inc()
    metrics.queue_wait_seconds.labels(kind="embed").observe(0.001)
    metrics.batch_size.labels(kind="embed").observe(8)
    metrics.tokens.labels(kind="embed").inc(10)
    metrics.engine_seconds.labels(kind="embed").observe(0.02)
    metrics.backend_fallbacks.labels(reason="no GPU").inc()
    metrics.backend_info.labels(model="m", backend="dense", pattern="dense", device="cpu").set(1)
    families = _families(metrics)
    assert {name: families.get(name) for name in EXPECTED} == EXPECTED


def test_own_metrics_are_prefixed_and_in_base_units() -> None:
    own = [
        name
        for name in _families(RuntimeMetrics())
        if name.startswith("sas_") and not name.endswith("_created")
    ]
    assert len(own) == len(EXPECTED)
    for name in own:
        assert not name.endswith(("_milliseconds", "_ms", "_tflops", "_bytes_mb")), name


def test_each_instance_counts_on_its_own_registry() -> None:
    first, second = RuntimeMetrics(), RuntimeMetrics()
    first.requests.labels(endpoint="/healthz", code="200").inc()
    labels = {"endpoint": "/healthz", "code": "200"}
    assert first.registry.get_sample_value("sas_requests_total", labels) == 1
    assert second.registry.get_sample_value("sas_requests_total", labels) is None


def test_process_metrics_come_along() -> None:
    families = _families(RuntimeMetrics())
    assert families["process_resident_memory_bytes"] == "gauge"
    assert families["python_info"] == "gauge"
