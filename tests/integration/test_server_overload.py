"""Overload on loopback (bounded): a real runtime process sheds load with 429 (queue full, rate
limit) and never loses an accepted request; the metrics agree with what clients saw."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.runtime_process import StartRuntime, engine_under_test

CONFIG: dict[str, Any] = {
    "attention": {"backend": "dense"},
    "batching": {"windowMicroseconds": 2000, "maxBatchSize": 8, "maxQueueDepth": 8},
    "rateLimit": {"requestsPerSecond": 150, "burst": 200},
    "server": {"device": "cpu"},
}
CLIENTS = 48
REQUESTS_PER_CLIENT = 8


async def _client_loop(client: httpx.AsyncClient, model: str, seen: list[httpx.Response]) -> None:
    for i in range(REQUESTS_PER_CLIENT):
        response = await client.post(
            "/v1/embeddings", json={"model": model, "input": [f"overload sentence {i}", "two"]}
        )
        seen.append(response)


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


@pytest.mark.parametrize("frontends", [1, 2], ids=["one-process", "two-frontends"])
def test_overload_gives_only_200_429_503_and_answers_every_request(
    start_runtime: StartRuntime, frontends: int
) -> None:
    """With two front-ends the queue bound and the rate limit still hold for the pod as a
    whole, and /metrics (summed over the processes) still agrees with the clients."""
    config = CONFIG | {"server": CONFIG["server"] | {"frontends": frontends}}
    runtime = start_runtime(config, engine=engine_under_test())

    async def run() -> tuple[list[httpx.Response], str]:
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=runtime.url, timeout=60, limits=limits) as client:
            model = (await client.get("/v1/models")).json()["data"][0]["id"]
            seen: list[httpx.Response] = []
            await asyncio.gather(*(_client_loop(client, model, seen) for _ in range(CLIENTS)))
            return seen, (await client.get("/metrics")).text

    seen, metrics = asyncio.run(run())
    statuses = Counter(r.status_code for r in seen)
    assert sum(statuses.values()) == CLIENTS * REQUESTS_PER_CLIENT
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses[200] > 0
    assert statuses[429] > 0, "the load did not overload the server"
    for response in seen:
        if response.status_code == 200:
            assert len(response.json()["data"]) == 2
        else:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"]["code"] in {"queue_full", "rate_limited"}
    for code, count in statuses.items():
        answered = _sample(metrics, "sas_requests_total", code=str(code), endpoint="/v1/embeddings")
        assert answered == count
    assert _sample(metrics, "sas_queue_depth") == 0
    assert _sample(metrics, "sas_batch_size_count", kind="embed") > 0
    assert runtime.process.poll() is None
