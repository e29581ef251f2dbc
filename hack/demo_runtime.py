"""The runtime on its own, locally: start `python -m sas_runtime serve` with
examples/runtime.yaml (all-MiniLM-L6-v2, dense attention, CPU), send real embeddings and
attention requests, print the answers and a few metrics, then stop it with SIGTERM.

    python -m hack.demo_runtime      (or: make demo-runtime)
"""

from __future__ import annotations

import base64
import signal
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
import safetensors.torch
import torch
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sas_runtime.tensor_codec import encode_payload
from tests.runtime_process import REAL_ENGINE, REPO_ROOT, RuntimeProcess, start_runtime_process

EXAMPLE = REPO_ROOT / "examples" / "runtime.yaml"
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A cheetah is running behind its prey.",
]
SHOWN_METRICS = {
    "sas_requests_total",
    "sas_batch_size_count",
    "sas_batch_size_sum",
    "sas_tokens_total",
    "sas_attention_flops_per_second",
    "sas_ready",
}


def _embeddings(client: httpx.Client, model: str) -> None:
    response = client.post("/v1/embeddings", json={"model": model, "input": SENTENCES})
    response.raise_for_status()
    body = response.json()
    vectors = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    print(f"POST /v1/embeddings: {len(vectors)} x {vectors.shape[1]} floats, usage {body['usage']}")
    similarity = vectors @ vectors.T
    print("  cosine similarity:")
    for sentence, row in zip(SENTENCES, similarity, strict=True):
        print(f"    {' '.join(f'{x:5.2f}' for x in row)}   {sentence}")
    as_base64 = client.post(
        "/v1/embeddings", json={"model": model, "input": SENTENCES[0], "encoding_format": "base64"}
    ).json()
    decoded = np.frombuffer(base64.b64decode(as_base64["data"][0]["embedding"]), dtype="<f4")
    print(f"  base64 form decodes to the same vector: {np.allclose(decoded, vectors[0])}")


def _attention(client: httpx.Client) -> None:
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 256, 64, generator=generator) for _ in range(3))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    body = {name: encode_payload(t).model_dump() for name, t in (("q", q), ("k", k), ("v", v))}
    response = client.post("/v1/attention", json=body | {"pattern": {"type": "causal"}})
    response.raise_for_status()
    answer = response.json()
    output = torch.frombuffer(
        bytearray(base64.b64decode(answer["output"]["data"])), dtype=torch.float32
    ).reshape(answer["output"]["shape"])
    error = (output - expected).abs().max().item()
    print(
        f"POST /v1/attention (JSON, causal, q/k/v {list(q.shape)}): backend {answer['backend']}, "
        f"max |out - torch SDPA| = {error:.2e}"
    )
    packed = client.post(
        "/v1/attention",
        content=safetensors.torch.save({"q": q, "k": k, "v": v}),
        headers={"content-type": "application/octet-stream"},
    )
    packed.raise_for_status()
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    error = (safetensors.torch.load(packed.content)["output"] - dense).abs().max().item()
    print(f"POST /v1/attention (safetensors, configured pattern): max |out - SDPA| = {error:.2e}")


def _bad_request(client: httpx.Client, model: str) -> None:
    response = client.post("/v1/embeddings", json={"model": model, "input": []})
    print(f"POST /v1/embeddings with no input: {response.status_code} {response.json()['error']}")


def _metrics(client: httpx.Client) -> None:
    print("GET /metrics (a few):")
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name in SHOWN_METRICS:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                print(f"    {sample.name}{{{labels}}} {sample.value:g}")


def _stop(runtime: RuntimeProcess) -> int:
    runtime.process.send_signal(signal.SIGTERM)
    code = runtime.process.wait(timeout=60)
    print(f"SIGTERM: the runtime drained and exited with {code}")
    return code


def main() -> int:
    config = yaml.safe_load(EXAMPLE.read_text())
    print(f"starting: python -m sas_runtime serve --config {EXAMPLE.relative_to(REPO_ROOT)}")
    with tempfile.TemporaryDirectory() as workdir:
        runtime = start_runtime_process(config, engine=REAL_ENGINE, workdir=Path(workdir))
        try:
            with httpx.Client(base_url=runtime.url, timeout=60) as client:
                (card,) = client.get("/v1/models").json()["data"]
                print(
                    f"ready at {runtime.url}: model {card['id']}, backend {card['backend']}, "
                    f"pattern {card['pattern']}, device {card['device']}"
                )
                _embeddings(client, card["id"])
                _attention(client)
                _bad_request(client, card["id"])
                _metrics(client)
            return _stop(runtime)
        finally:
            runtime.stop()


if __name__ == "__main__":
    sys.exit(main())
