"""Bad input over real HTTP to a real `python -m sas_runtime serve` process: every case gets a
clear 4xx JSON error, none a 5xx, and the server keeps serving."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import safetensors.torch
import torch

from tests.runtime_process import RuntimeProcess, StartRuntime, engine_under_test

CONFIG: dict[str, Any] = {
    "model": {"longInputs": "reject"},
    "attention": {"backend": "dense"},
    "rateLimit": {"requestsPerSecond": 100000, "burst": 100000},
    "server": {
        "device": "cpu",
        "maxBodyBytes": 65536,
        "maxInputs": 8,
        "maxAttentionElements": 4096,
    },
}
LONG_TEXT = " ".join(["tokens"] * 400)


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-frontends"])
def runtime(start_runtime: StartRuntime, request: pytest.FixtureRequest) -> RuntimeProcess:
    """The runtime in one process, and as two HTTP front-ends around an engine process."""
    config = CONFIG | {"server": CONFIG["server"] | {"frontends": request.param}}
    return start_runtime(config, engine=engine_under_test())


@pytest.fixture(scope="module")
def client(runtime: RuntimeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=runtime.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def model(client: httpx.Client) -> str:
    name: str = client.get("/v1/models").json()["data"][0]["id"]
    return name


def _tensor(shape: list[int], dtype: str = "float32", fill: float = 0.5) -> dict[str, Any]:
    size = {"float32": 4, "float16": 2, "bfloat16": 2, "int32": 4, "int64": 8}[dtype]
    count = 1
    for d in shape:
        count *= d
    raw = (
        struct.pack(f"<{count}f", *([fill] * count))
        if dtype == "float32"
        else b"\0" * (count * size)
    )
    return {"dtype": dtype, "shape": shape, "data": base64.b64encode(raw).decode()}


def _qkv(**override: Any) -> dict[str, Any]:
    body = {"q": _tensor([1, 2, 4, 8]), "k": _tensor([1, 2, 4, 8]), "v": _tensor([1, 2, 4, 8])}
    return body | override


def _safetensors(**tensors: torch.Tensor) -> bytes:
    qkv = {name: torch.rand(1, 2, 4, 8) for name in ("q", "k", "v")} | tensors
    return safetensors.torch.save(qkv)


def _safetensors_f8_e8m0() -> bytes:
    """q, k and v in F8_E8M0, a dtype the format has and torch cannot load."""
    entries = {
        n: {"dtype": "F8_E8M0", "shape": [1, 2, 4, 8], "data_offsets": [64 * i, 64 * i + 64]}
        for i, n in enumerate("qkv")
    }
    header = json.dumps(entries).encode()
    return struct.pack("<Q", len(header)) + header + bytes(3 * 64)


def _check_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error["type"]
    assert error["message"]
    return error


JSON = {"content-type": "application/json"}
OCTETS = {"content-type": "application/octet-stream"}

EMBEDDING_CASES: list[tuple[str, Any, int]] = [
    ("malformed JSON", b'{"model": "m", "input": ["a",', 400),
    ("not UTF-8", b'{"model": "m", "input": "\xff\xfe"}', 400),
    ("JSON array body", b"[1, 2, 3]", 400),
    ("deeply nested JSON", b"[" * 30_000 + b"]" * 30_000, 400),
    ("input a number", {"input": 42}, 400),
    ("input a list of numbers", {"input": [1, 2, 3]}, 400),
    ("input a mapping", {"input": {"a": "b"}}, 400),
    ("input null", {"input": None}, 400),
    ("empty string", {"input": ""}, 400),
    ("empty list", {"input": []}, 400),
    ("an empty string in a list", {"input": ["fine", ""]}, 400),
    ("too many inputs", {"input": ["x"] * 9}, 400),
    ("text past the model length", {"input": ["fine", LONG_TEXT]}, 413),
    ("unknown encoding", {"input": "x", "encoding_format": "int4"}, 400),
    ("unknown field", {"input": "x", "temperature": 0.5}, 400),
    ("wrong dimensions", {"input": "x", "dimensions": 7}, 400),
    ("unknown model", {"input": "x", "model": "gpt-5"}, 404),
    ("model a number", {"input": "x", "model": 5}, 400),
]


@pytest.mark.parametrize(
    ("body", "status"),
    [pytest.param(body, status, id=name) for name, body, status in EMBEDDING_CASES],
)
def test_bad_embeddings_requests_get_a_4xx_json_error(
    client: httpx.Client, model: str, body: Any, status: int
) -> None:
    if isinstance(body, bytes):
        response = client.post("/v1/embeddings", content=body, headers=JSON)
    else:
        response = client.post("/v1/embeddings", json={"model": model} | body)
    _check_error(response, status)
    assert client.get("/healthz").status_code == 200


ATTENTION_CASES: list[tuple[str, Any, dict[str, str], int]] = [
    ("malformed JSON", b'{"q": ', JSON, 400),
    ("q missing", {"k": _tensor([1, 2, 4, 8]), "v": _tensor([1, 2, 4, 8])}, JSON, 400),
    ("q 3-d", _qkv(q=_tensor([2, 4, 8])), JSON, 400),
    ("k and v differ", _qkv(v=_tensor([1, 2, 5, 8])), JSON, 400),
    ("head_dim differs", _qkv(k=_tensor([1, 2, 4, 4]), v=_tensor([1, 2, 4, 4])), JSON, 400),
    ("heads not a multiple", _qkv(q=_tensor([1, 3, 4, 8])), JSON, 400),
    ("integer q", _qkv(q=_tensor([1, 2, 4, 8], "int32")), JSON, 400),
    ("mixed dtypes", _qkv(q=_tensor([1, 2, 4, 8], "float16")), JSON, 400),
    ("unknown dtype", _qkv(q={"dtype": "complex64", "shape": [1], "data": ""}), JSON, 400),
    (
        "negative dimension",
        _qkv(q={"dtype": "float32", "shape": [1, -2, 4, 8], "data": ""}),
        JSON,
        400,
    ),
    ("data shorter than shape", _qkv(q=_tensor([1, 2, 4, 8]) | {"shape": [1, 2, 8, 8]}), JSON, 400),
    ("data not base64", _qkv(q=_tensor([1, 2, 4, 8]) | {"data": "%%%%"}), JSON, 400),
    (
        "over the element limit",
        _qkv(q={"dtype": "float32", "shape": [1, 64, 64, 64], "data": ""}),
        JSON,
        413,
    ),
    (
        "astronomical shape",
        _qkv(q={"dtype": "float32", "shape": [10**30, 10**30], "data": ""}),
        JSON,
        413,
    ),
    ("NaN", _qkv(v=_tensor([1, 2, 4, 8], fill=float("nan"))), JSON, 400),
    ("Inf", _qkv(k=_tensor([1, 2, 4, 8], fill=float("inf"))), JSON, 400),
    ("pattern unknown", _qkv(pattern={"type": "spiral"}), JSON, 400),
    ("window pattern without window", _qkv(pattern={"type": "window"}), JSON, 400),
    ("document pattern without ids", _qkv(pattern={"type": "document"}), JSON, 400),
    ("garbage safetensors", b"\x08\0\0\0\0\0\0\0not json", OCTETS, 400),
    ("truncated safetensors", _safetensors()[:-10], OCTETS, 400),
    (
        "safetensors without v",
        safetensors.torch.save({"q": torch.rand(1, 2, 4, 8), "k": torch.rand(1, 2, 4, 8)}),
        OCTETS,
        400,
    ),
    ("safetensors extra tensor", _safetensors(bias=torch.rand(3)), OCTETS, 400),
    ("safetensors of a dtype torch cannot hold", _safetensors_f8_e8m0(), OCTETS, 400),
    ("safetensors NaN", _safetensors(q=torch.full((1, 2, 4, 8), float("nan"))), OCTETS, 400),
    ("safetensors over the limit", _safetensors(q=torch.rand(1, 2, 64, 64)), OCTETS, 413),
    ("plain text", b"q=1&k=2", {"content-type": "text/plain"}, 415),
    ("no content type", b"{}", {}, 415),
]


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [pytest.param(b, h, s, id=name) for name, b, h, s in ATTENTION_CASES],
)
def test_bad_attention_requests_get_a_4xx_json_error(
    client: httpx.Client, body: Any, headers: dict[str, str], status: int
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post("/v1/attention", content=content, headers=headers)
    _check_error(response, status)
    assert client.get("/healthz").status_code == 200


def test_oversized_bodies_get_413_declared_or_streamed(client: httpx.Client, model: str) -> None:
    declared = client.post("/v1/embeddings", json={"model": model, "input": ["x" * 70_000]})
    assert _check_error(declared, 413)["code"] == "too_large"

    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b"0" * 1024

    streamed = client.post("/v1/attention", content=chunks(), headers=OCTETS)
    assert _check_error(streamed, 413)["code"] == "too_large"


def test_unknown_routes_and_methods_get_json_errors(client: httpx.Client) -> None:
    _check_error(client.get("/v1/completions"), 404)
    wrong_method = client.get("/v1/embeddings")
    _check_error(wrong_method, 405)
    assert wrong_method.headers["allow"] == "POST"


def test_the_server_still_serves_and_never_failed(
    client: httpx.Client, model: str, runtime: RuntimeProcess
) -> None:
    response = client.post("/v1/embeddings", json={"model": model, "input": ["still here"]})
    assert response.status_code == 200
    assert len(response.json()["data"]) == 1
    good = client.post("/v1/attention", json=_qkv())
    assert good.status_code == 200, good.text
    assert good.json()["output"]["shape"] == [1, 2, 4, 8]
    metrics = client.get("/metrics").text
    assert 'code="500"' not in metrics
    assert runtime.process.poll() is None
    assert "Traceback" not in runtime.output()


def test_long_texts_are_truncated_when_so_configured(start_runtime: StartRuntime) -> None:
    config = CONFIG | {"model": {"longInputs": "truncate"}}
    truncating = start_runtime(config, engine=engine_under_test())
    with httpx.Client(base_url=truncating.url, timeout=60) as client:
        card = client.get("/v1/models").json()["data"][0]
        response = client.post(
            "/v1/embeddings", json={"model": card["id"], "input": [LONG_TEXT, "short"]}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["data"]) == 2
    # the long text is cut to the model's length; "short" is [CLS] short [SEP]
    assert body["usage"]["prompt_tokens"] == card["max_sequence_length"] + 3
