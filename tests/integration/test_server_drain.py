"""SIGTERM on a real runtime process: readiness drops, new work gets 503, in-flight work
finishes (or, past `drainSeconds`, is answered 503), and the process exits 0."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.runtime_process import (
    REAL_ENGINE,
    SLOW_FAKE_ENGINE,
    RuntimeProcess,
    StartRuntime,
    engine_under_test,
)

FRONTENDS = pytest.mark.parametrize("frontends", [1, 2], ids=["one-process", "two-frontends"])
"""Each case runs on the runtime in one process and as two front-ends around an engine process
(where SIGTERM reaches the supervisor, which drains the front-ends, then stops the engine)."""


def _config(drain_seconds: int, frontends: int) -> dict[str, Any]:
    return {
        "batching": {"windowMicroseconds": 0, "maxBatchSize": 1},
        "server": {"device": "cpu", "drainSeconds": drain_seconds, "frontends": frontends},
    }


def _queue_depth(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sas_queue_depth":
                return float(sample.value)
    raise AssertionError("no sas_queue_depth in /metrics")


async def _sigterm_with_work_in_flight(
    runtime: RuntimeProcess, requests: int, texts: list[str], *, signals: int = 1
) -> tuple[list[httpx.Response], httpx.Response, httpx.Response]:
    """Send `requests` embeddings requests, SIGTERM once all are queued (`signals` times, 0.2 s
    apart), then probe."""
    async with httpx.AsyncClient(base_url=runtime.url, timeout=60) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        body = {"model": model, "input": texts}
        in_flight = [
            asyncio.create_task(client.post("/v1/embeddings", json=body)) for _ in range(requests)
        ]
        for _ in range(1000):
            if _queue_depth((await client.get("/metrics")).text) == requests:
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError(f"{requests} requests were never in flight together")
        runtime.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        readyz = await client.get("/readyz")
        late = await client.post("/v1/embeddings", json=body)
        for _ in range(signals - 1):
            runtime.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
        return list(await asyncio.gather(*in_flight)), readyz, late


@FRONTENDS
@pytest.mark.parametrize(
    ("engine", "texts"),
    [
        pytest.param(SLOW_FAKE_ENGINE, [f"text {i}" for i in range(4)], id="slow-fake-engine"),
        pytest.param(
            REAL_ENGINE,
            [" ".join(f"word{i} {j}" for j in range(20)) for i in range(6)],
            id="real-engine",
        ),
    ],
)
def test_sigterm_lets_in_flight_work_finish_then_exits_0(
    start_runtime: StartRuntime, engine: str, texts: list[str], frontends: int
) -> None:
    if engine == REAL_ENGINE and engine_under_test() != REAL_ENGINE:
        pytest.skip("sas_runtime.model_engine does not import here")
    runtime = start_runtime(_config(drain_seconds=30, frontends=frontends), engine=engine)
    answered, readyz, late = asyncio.run(_sigterm_with_work_in_flight(runtime, 8, texts))
    assert [r.status_code for r in answered] == [200] * 8
    assert all(len(r.json()["data"]) == len(texts) for r in answered)
    assert (readyz.status_code, readyz.json()) == (503, {"status": "draining"})
    assert late.status_code == 503
    assert late.json()["error"]["code"] == "draining"
    assert runtime.process.wait(timeout=30) == 0
    assert "Traceback" not in runtime.output()


@FRONTENDS
def test_work_past_the_drain_time_is_answered_503_and_the_exit_is_still_0(
    start_runtime: StartRuntime, frontends: int
) -> None:
    runtime = start_runtime(_config(drain_seconds=1, frontends=frontends), engine=SLOW_FAKE_ENGINE)
    texts = [f"text {i}" for i in range(8)]
    answered, _, _ = asyncio.run(_sigterm_with_work_in_flight(runtime, 8, texts))
    assert set(_statuses_cut_short(answered)) == {200, 503}
    assert runtime.process.wait(timeout=30) == 0


@FRONTENDS
def test_a_second_sigterm_answers_what_is_left_with_503_and_exits_at_once(
    start_runtime: StartRuntime, frontends: int
) -> None:
    runtime = start_runtime(_config(drain_seconds=60, frontends=frontends), engine=SLOW_FAKE_ENGINE)
    texts = [f"text {i}" for i in range(8)]
    began = time.monotonic()
    answered, _, _ = asyncio.run(_sigterm_with_work_in_flight(runtime, 8, texts, signals=2))
    assert runtime.process.wait(timeout=30) == 0
    assert time.monotonic() - began < 20  # not the 60 s drain
    statuses = _statuses_cut_short(answered)
    assert 503 in statuses, statuses
    assert set(statuses) <= {200, 503}, statuses
    assert "Traceback" not in runtime.output()


def _statuses_cut_short(answered: list[httpx.Response]) -> list[int]:
    """The answers' status codes, checking that each 503 says draining and when to retry."""
    for response in answered:
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "draining"
            assert "retry-after" in response.headers
    return [r.status_code for r in answered]
