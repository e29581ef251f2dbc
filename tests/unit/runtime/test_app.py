from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import safetensors.torch
import torch

from sas_runtime import app as app_module
from sas_runtime.app import create_app, serving_state
from sas_runtime.config import RuntimeConfig
from sas_runtime.tensor_codec import encode_payload
from tests.fake_engine import REFUSED_WORD, FakeEngine, eventually


@asynccontextmanager
async def serving(
    engine: FakeEngine, **sections: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(RuntimeConfig.model_validate(sections), engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://runtime") as client:
            yield client, app
        if engine.gate is not None:
            engine.gate.set()


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"type", "message", "param", "code"}
    assert error["message"]
    return error


def _embed(texts: str | list[str], **extra: Any) -> dict[str, Any]:
    return {"model": "fake-minilm", "input": texts, **extra}


async def test_embeddings_answer_as_openai_does(fake_engine: FakeEngine) -> None:
    async with serving(fake_engine) as (client, _):
        response = await client.post("/v1/embeddings", json=_embed(["a b c", "d"]))
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert body["model"] == "fake-minilm"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["usage"] == {"prompt_tokens": 5 + 3, "total_tokens": 5 + 3}
    expected = fake_engine.embed(fake_engine.encode(["a b c", "d"]))
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], expected, rtol=1e-6)


async def test_embeddings_in_base64_are_little_endian_float32(fake_engine: FakeEngine) -> None:
    async with serving(fake_engine) as (client, _):
        response = await client.post(
            "/v1/embeddings", json=_embed("hello there", encoding_format="base64")
        )
    raw = base64.b64decode(response.json()["data"][0]["embedding"])
    vector = np.frombuffer(raw, dtype="<f4")
    np.testing.assert_array_equal(vector, fake_engine.embed(fake_engine.encode(["hello there"]))[0])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "fake-minilm", "input": ""}, "input"),
        ({"model": "fake-minilm", "input": []}, "input"),
        ({"model": "fake-minilm", "input": [1, 2]}, "input"),
        ({"model": "fake-minilm", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "fake-minilm", "input": "x", "dimensions": 3}, "dimensions"),
        ({"model": "fake-minilm", "input": "x", "temperature": 1}, "temperature"),
        ({"input": "x"}, "model"),
        ([1, 2, 3], None),
    ],
)
async def test_bad_embeddings_requests_get_400_naming_the_parameter(
    fake_engine: FakeEngine, body: Any, param: str | None
) -> None:
    async with serving(fake_engine) as (client, _):
        response = await client.post("/v1/embeddings", json=body)
    error = _error(response, 400)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] is not None
        assert error["param"].startswith(param)


async def test_malformed_json_gets_400(fake_engine: FakeEngine) -> None:
    async with serving(fake_engine) as (client, _):
        response = await client.post(
            "/v1/embeddings",
            content=b'{"input": "x",',
            headers={"content-type": "application/json"},
        )
    assert "JSON" in _error(response, 400)["message"]


async def test_too_many_inputs_get_400(fake_engine: FakeEngine) -> None:
    async with serving(fake_engine, server={"maxInputs": 3}) as (client, _):
        response = await client.post("/v1/embeddings", json=_embed(["a"] * 4))
    assert "maxInputs" in _error(response, 400)["message"]


async def test_unknown_model_gets_404(fake_engine: FakeEngine) -> None:
    async with serving(fake_engine) as (client, _):
        response = await client.post("/v1/embeddings", json={"model": "gpt", "input": "x"})
    assert _error(response, 404)["code"] == "model_not_found"


async def test_long_texts_are_truncated_or_rejected_as_configured() -> None:
    long_text = " ".join(["word"] * 100)
    async with serving(FakeEngine(max_length=16), model={"maxSequenceLength": 16}) as (client, _):
        response = await client.post("/v1/embeddings", json=_embed(long_text))
    assert response.json()["usage"]["prompt_tokens"] == 16
    async with serving(
        FakeEngine(max_length=16), model={"maxSequenceLength": 16, "longInputs": "reject"}
    ) as (client, _):
        response = await client.post("/v1/embeddings", json=_embed(["short", long_text]))
    error = _error(response, 413)
    assert error["param"] == "input.1"


def _attention_json(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **extra: Any
) -> dict[str, Any]:
    return {
        "q": encode_payload(q).model_dump(),
        "k": encode_payload(k).model_dump(),
        "v": encode_payload(v).model_dump(),
        **extra,
    }


async def test_attention_json_round_trip(fake_engine: FakeEngine) -> None:
    q, k, v = torch.randn(2, 4, 8, 16), torch.randn(2, 2, 8, 16), torch.randn(2, 2, 8, 16)
    async with serving(fake_engine) as (client, _):
        response = await client.post(
            "/v1/attention", json=_attention_json(q, k, v, pattern={"type": "causal"})
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["backend"], body["pattern"]) == ("dense", "causal")
    out = torch.frombuffer(bytearray(base64.b64decode(body["output"]["data"])), dtype=torch.float32)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True, enable_gqa=True
    )
    torch.testing.assert_close(out.reshape(body["output"]["shape"]), expected)


@pytest.mark.parametrize("media_type", ["application/octet-stream", "application/safetensors"])
async def test_attention_safetensors_round_trip(fake_engine: FakeEngine, media_type: str) -> None:
    q, k, v = (torch.randn(1, 2, 4, 8, dtype=torch.bfloat16) for _ in range(3))
    async with serving(fake_engine) as (client, _):
        response = await client.post(
            "/v1/attention",
            content=safetensors.torch.save({"q": q, "k": k, "v": v}),
            headers={"content-type": media_type},
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    output = safetensors.torch.load(response.content)["output"]
    assert output.dtype == torch.bfloat16
    expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    torch.testing.assert_close(output, expected.bfloat16())


@pytest.mark.parametrize(
    ("tensors", "pattern", "status", "param"),
    [
        ({"q": torch.randn(1, 2, 4)}, None, 400, "q"),
        ({"q": torch.randn(1, 2, 4, 8), "k": torch.randn(1, 2, 5, 8)}, None, 400, "v"),
        ({"q": torch.full((1, 2, 4, 8), float("nan"))}, None, 400, "q"),
        ({"v": torch.randn(1, 2, 4, 8).half()}, None, 400, "k"),
        ({}, {"type": "window"}, 400, "pattern"),
        ({}, {"type": "causal", "window": 2}, 400, "pattern"),
        ({}, {"type": "document"}, 400, "document_ids"),
        ({"q": torch.randn(1, 2, 64, 64)}, None, 413, "q"),
    ],
)
async def test_bad_attention_requests_get_4xx(
    fake_engine: FakeEngine,
    tensors: dict[str, torch.Tensor],
    pattern: dict[str, Any] | None,
    status: int,
    param: str,
) -> None:
    qkv = {"q": torch.randn(1, 2, 4, 8), "k": torch.randn(1, 2, 4, 8), "v": torch.randn(1, 2, 4, 8)}
    qkv |= tensors
    body = _attention_json(qkv["q"], qkv["k"], qkv["v"])
    if pattern is not None:
        body["pattern"] = pattern
    async with serving(fake_engine, server={"maxAttentionElements": 4096}) as (client, _):
        response = await client.post("/v1/attention", json=body)
    assert _error(response, status)["param"].startswith(param)


async def test_attention_in_another_media_type_gets_415(fake_engine: FakeEngine) -> None:
    async with serving(fake_engine) as (client, _):
        response = await client.post(
            "/v1/attention", content=b"q=1", headers={"content-type": "text/plain"}
        )
    _error(response, 415)


async def test_models_reports_backend_and_pattern(fake_engine: FakeEngine) -> None:
    async with serving(fake_engine) as (client, _):
        response = await client.get("/v1/models")
    (card,) = response.json()["data"]
    assert (card["id"], card["backend"], card["pattern"]) == ("fake-minilm", "dense", "dense")
    assert card["fallback_reason"] is None


async def test_probes_follow_warm_up_and_drain(fake_engine: FakeEngine) -> None:
    async with serving(fake_engine) as (client, app):
        assert (await client.get("/healthz")).json() == {"status": "alive"}
        assert (await client.get("/readyz")).status_code == 200
        await serving_state(app).drain()
        readyz = await client.get("/readyz")
        assert (readyz.status_code, readyz.json()) == (503, {"status": "draining"})
        refused = await client.post("/v1/embeddings", json=_embed("x"))
        assert _error(refused, 503)["code"] == "draining"
        assert refused.headers["retry-after"] == "1"
        assert (await client.get("/healthz")).status_code == 200


async def test_drain_waits_for_in_flight_work() -> None:
    engine = FakeEngine(gate=threading.Event())
    async with serving(engine) as (client, app):
        in_flight = asyncio.create_task(client.post("/v1/embeddings", json=_embed("x")))
        await eventually(lambda: bool(engine.batches))
        drain = asyncio.create_task(serving_state(app).drain())
        await asyncio.sleep(0.05)
        assert not drain.done()
        assert engine.gate is not None
        engine.gate.set()
        assert await drain is True
        assert (await in_flight).status_code == 200


async def test_bearer_token_guards_the_api_only(fake_engine: FakeEngine, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    async with serving(fake_engine, server={"authTokenFile": str(token_file)}) as (client, _):
        missing = await client.post("/v1/embeddings", json=_embed("x"))
        wrong = await client.get("/v1/models", headers={"authorization": "Bearer nope"})
        right = await client.post(
            "/v1/embeddings", json=_embed("x"), headers={"authorization": "Bearer s3cret"}
        )
        probe = await client.get("/readyz")
    assert _error(missing, 401)["type"] == "authentication_error"
    assert missing.headers["www-authenticate"] == "Bearer"
    _error(wrong, 401)
    assert right.status_code == 200
    assert probe.status_code == 200


async def test_a_root_path_does_not_bypass_admission(
    fake_engine: FakeEngine, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    config = RuntimeConfig.model_validate({"server": {"authTokenFile": str(token_file)}})
    app = create_app(config, fake_engine)
    q = torch.rand(1, 2, 4, 8)
    body = safetensors.torch.save({"q": q, "k": q.clone(), "v": q.clone()})
    octets = {"content-type": "application/octet-stream"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, root_path="/mounted")
        async with httpx.AsyncClient(transport=transport, base_url="http://runtime") as client:
            refused = await client.post("/mounted/v1/attention", content=body, headers=octets)
            answered = await client.post(
                "/mounted/v1/attention",
                content=body,
                headers={**octets, "authorization": "Bearer s3cret"},
            )
    _error(refused, 401)
    assert answered.status_code == 200, answered.text
    torch.testing.assert_close(
        safetensors.torch.load(answered.content)["output"],
        torch.nn.functional.scaled_dot_product_attention(q, q, q),
    )


async def test_rate_limit_answers_429_with_retry_after(fake_engine: FakeEngine) -> None:
    async with serving(fake_engine, rateLimit={"requestsPerSecond": 1, "burst": 2}) as (client, _):
        statuses = [(await client.post("/v1/embeddings", json=_embed("x"))) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert _error(statuses[2], 429)["code"] == "rate_limited"
    assert int(statuses[2].headers["retry-after"]) >= 1


async def test_oversized_bodies_get_413(fake_engine: FakeEngine) -> None:
    body = _embed("x" * 5000)
    async with serving(fake_engine, server={"maxBodyBytes": 4096}) as (client, _):
        declared = await client.post("/v1/embeddings", json=body)

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"x" * 1000

        streamed = await client.post("/v1/attention", content=chunks())
        after = await client.post("/v1/embeddings", json=_embed("fits"))
    assert _error(declared, 413)["code"] == "too_large"
    assert _error(streamed, 413)["code"] == "too_large"
    assert after.status_code == 200


async def test_a_request_past_its_timeout_header_gets_504() -> None:
    engine = FakeEngine(gate=threading.Event())
    async with serving(engine) as (client, _):
        response = await client.post(
            "/v1/embeddings", json=_embed("x"), headers={"x-request-timeout-ms": "30"}
        )
    assert _error(response, 504)["code"] == "deadline_exceeded"


async def test_a_bad_timeout_header_gets_400(fake_engine: FakeEngine) -> None:
    async with serving(fake_engine) as (client, _):
        response = await client.post(
            "/v1/embeddings", json=_embed("x"), headers={"x-request-timeout-ms": "soon"}
        )
    assert _error(response, 400)["param"] == "X-Request-Timeout-Ms"


async def test_a_full_queue_gets_429() -> None:
    engine = FakeEngine(gate=threading.Event())
    async with serving(engine, batching={"maxBatchSize": 1, "maxQueueDepth": 1}) as (client, _):
        first = asyncio.create_task(client.post("/v1/embeddings", json=_embed("x")))
        await eventually(lambda: bool(engine.batches))
        second = await client.post("/v1/embeddings", json=_embed("y"))
        assert engine.gate is not None
        engine.gate.set()
        assert (await first).status_code == 200
    assert _error(second, 429)["code"] == "queue_full"
    assert second.headers["retry-after"] == "1"


async def test_unknown_routes_get_a_json_404(fake_engine: FakeEngine) -> None:
    async with serving(fake_engine) as (client, _):
        response = await client.get("/v2/nothing")
    _error(response, 404)


async def test_metrics_count_requests_by_endpoint_and_code(fake_engine: FakeEngine) -> None:
    async with serving(fake_engine) as (client, _):
        await client.post("/v1/embeddings", json=_embed("x"))
        await client.post("/v1/embeddings", json={"input": 3})
        text = (await client.get("/metrics")).text
    assert 'sas_requests_total{code="200",endpoint="/v1/embeddings"} 1.0' in text
    assert 'sas_requests_total{code="400",endpoint="/v1/embeddings"} 1.0' in text
    assert 'sas_rejections_total{reason="invalid_request"} 1.0' in text
    assert (
        'sas_backend_info{backend="dense",device="cpu",model="fake-minilm",pattern="dense"} 1.0'
        in text
    )
    assert "sas_request_duration_seconds_bucket" in text


@pytest.mark.parametrize(
    ("text", "param", "says"),
    [
        ([], "input", "at least 1 item"),
        (["fine", ""], "input.1", "at least 1 character"),
        (7, "input", "valid string"),
    ],
)
async def test_errors_name_the_field_not_the_union_branch(
    fake_engine: FakeEngine, text: Any, param: str, says: str
) -> None:
    async with serving(fake_engine) as (client, _):
        response = await client.post("/v1/embeddings", json=_embed(text))
    error = _error(response, 400)
    assert error["param"] == param
    assert says in error["message"]


async def test_a_backend_fallback_shows_in_models_and_metrics() -> None:
    engine = FakeEngine(fallback_reason="sparse kernel needs sm_90")
    async with serving(engine) as (client, _):
        (card,) = (await client.get("/v1/models")).json()["data"]
        text = (await client.get("/metrics")).text
    assert card["fallback_reason"] == "sparse kernel needs sm_90"
    assert card["skipped_backends"] == {"sparse": ["sparse kernel needs sm_90"]}
    assert 'sas_backend_fallbacks_total{reason="sparse kernel needs sm_90"} 1.0' in text


async def test_each_rejection_is_counted_once() -> None:
    engine = FakeEngine(gate=threading.Event())
    async with serving(engine, batching={"maxBatchSize": 1, "maxQueueDepth": 1}) as (client, _):
        first = asyncio.create_task(client.post("/v1/embeddings", json=_embed("x")))
        await eventually(lambda: bool(engine.batches))
        await client.post("/v1/embeddings", json=_embed("y"))
        assert engine.gate is not None
        engine.gate.set()
        await first
        text = (await client.get("/metrics")).text
    assert 'sas_rejections_total{reason="queue_full"} 1.0' in text


_PLAIN_PATH_CASES = [
    pytest.param(_embed(["a b c", "d"]), {}, id="texts"),
    pytest.param(_embed("a b", encoding_format="base64"), {}, id="base64"),
    pytest.param(_embed("x", dimensions=16, user="u1"), {"X-Request-Timeout-Ms": "5000"}, id="all"),
    pytest.param({"model": "gpt", "input": "x"}, {}, id="unknown-model"),
    pytest.param(_embed("x", dimensions=3), {}, id="wrong-dimensions"),
    pytest.param(_embed(["a"] * 300), {}, id="too-many-inputs"),
    pytest.param(_embed(["short", " ".join(["w"] * 40)]), {}, id="too-long"),
    pytest.param(_embed(f"x {REFUSED_WORD}"), {}, id="engine-refuses"),
]


@pytest.mark.parametrize(("body", "headers"), _PLAIN_PATH_CASES)
async def test_plain_embeddings_requests_skip_fastapi_and_answer_the_same(
    body: dict[str, Any], headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = []
    taken: list[bool] = []
    plain_request = app_module._plain_embeddings_request

    def recording(*args: Any) -> Any:
        parsed = plain_request(*args)
        taken.append(parsed is not None)
        return parsed

    for plain_path in (True, False):
        monkeypatch.setattr(
            app_module,
            "_plain_embeddings_request",
            # the second time, every request goes through FastAPI's route
            recording if plain_path else lambda *_: None,
        )
        engine = FakeEngine(max_length=32)
        config = {"model": {"maxSequenceLength": 32, "longInputs": "reject"}}
        async with serving(engine, **config) as (client, _):
            response = await client.post("/v1/embeddings", json=body, headers=headers)
            metrics = (await client.get("/metrics")).text
        rejections = sorted(line for line in metrics.splitlines() if "rejections_total{" in line)
        answers.append((response.status_code, response.json(), rejections))
    assert taken == [True]
    assert answers[0] == answers[1]


@pytest.mark.parametrize(
    ("content_type", "timeouts", "body", "plain"),
    [
        ("application/json", [], _embed("x"), True),
        ("Application/JSON; charset=utf-8", ["250"], _embed("x"), True),
        ("text/plain", [], _embed("x"), False),
        (None, [], _embed("x"), False),
        ("application/json", ["0"], _embed("x"), False),
        ("application/json", ["600001"], _embed("x"), False),
        ("application/json", ["1e3"], _embed("x"), False),
        ("application/json", ["5", "6"], _embed("x"), False),
        ("application/json", [], {"input": "x"}, False),
        ("application/json", [], _embed(""), False),
    ],
)
def test_only_plainly_valid_requests_take_the_short_path(
    content_type: str | None, timeouts: list[str], body: dict[str, Any], plain: bool
) -> None:
    headers = [(b"x-request-timeout-ms", t.encode()) for t in timeouts]
    if content_type is not None:
        headers.append((b"content-type", content_type.encode()))
    parsed = app_module._plain_embeddings_request({"headers": headers}, json.dumps(body).encode())
    assert (parsed is not None) == plain
    if parsed is not None:
        assert parsed[1] == (int(timeouts[0]) if timeouts else None)


def test_two_content_types_take_the_long_path() -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-type", b"application/json")]
    body = json.dumps(_embed("x")).encode()
    assert app_module._plain_embeddings_request({"headers": headers}, body) is None
