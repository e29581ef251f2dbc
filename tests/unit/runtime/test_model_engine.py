"""The real engine on the CPU: info, tokenization, embeddings, attention requests, refusals."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sas_runtime.attention import BackendUnavailableError
from sas_runtime.attention.backend import AttentionMetadata
from sas_runtime.attention.reference import ReferenceBackend
from sas_runtime.block_mask import compile_block_mask
from sas_runtime.config import DeviceName, PatternConfig, PatternType, RuntimeConfig
from sas_runtime.engine import AttentionInput, EncodedText, Engine
from sas_runtime.model_engine import EngineStartError, ModelEngine, build_engine, choose_device
from sas_runtime.model_files import builtin_model_directory


def runtime_config(**sections: Any) -> RuntimeConfig:
    return RuntimeConfig.model_validate({"server": {"device": "cpu"}, **sections})


@pytest.fixture(scope="module")
def engine() -> ModelEngine:
    built = build_engine(runtime_config())
    built.warmup()
    return built


def test_engine_satisfies_the_protocol_and_reports_itself(engine: ModelEngine) -> None:
    protocol_engine: Engine = engine
    info = protocol_engine.info
    assert info.model == "all-MiniLM-L6-v2"
    assert info.embedding_dim == 384
    assert info.max_sequence_length == 256
    assert (info.device, info.dtype) == ("cpu", "float32")
    assert info.backend == "dense"
    assert info.pattern == "dense"
    assert info.fallback_reason is not None
    assert info.fallback_reason.startswith("sparse: ")
    assert list(info.skipped) == ["sparse"]


def test_encode_adds_special_tokens_and_flags_truncation(engine: ModelEngine) -> None:
    short, long, empty = engine.encode(["Hello world", "word " * 400, ""])
    assert short == EncodedText(ids=(101, 7592, 2088, 102), truncated=False)
    assert len(long.ids) == 256
    assert long.truncated
    assert long.ids[0] == 101
    assert long.ids[-1] == 102
    assert empty == EncodedText(ids=(101, 102), truncated=False)


def test_configured_max_sequence_length_truncates_earlier() -> None:
    engine = build_engine(runtime_config(model={"maxSequenceLength": 16}))
    assert engine.info.max_sequence_length == 16
    (encoded,) = engine.encode(["word " * 20])
    assert len(encoded.ids) == 16
    assert encoded.truncated
    (exact,) = engine.encode(["word " * 14])
    assert len(exact.ids) == 16
    assert not exact.truncated


def test_max_sequence_length_past_the_model_is_refused() -> None:
    with pytest.raises(EngineStartError, match=r"maxSequenceLength 1024 exceeds.*512"):
        build_engine(runtime_config(model={"maxSequenceLength": 1024}))


def test_embed_returns_normalised_float32_rows(engine: ModelEngine) -> None:
    embeddings = engine.embed(engine.encode(["first text", "a second, longer text here"]))
    assert embeddings.dtype == np.float32
    assert embeddings.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    assert engine.embed([]).shape == (0, 384)


def test_similar_texts_are_closer_than_unrelated_ones(engine: ModelEngine) -> None:
    cat, kitten, tax = engine.embed(
        engine.encode(["A cat sleeps on the sofa.", "A kitten naps on the couch.", "Tax law."])
    )
    assert float(cat @ kitten) > float(cat @ tax) + 0.3


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ([EncodedText(ids=())], "has 0 tokens"),
        ([EncodedText(ids=(101,) * 300)], "has 300 tokens"),
        ([EncodedText(ids=(101, 99999, 102))], "outside"),
        ([EncodedText(ids=(101, -1, 102))], "outside"),
    ],
)
def test_embed_refuses_ids_the_model_cannot_take(
    engine: ModelEngine, batch: list[EncodedText], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        engine.embed(batch)


def qkv(
    shape: tuple[int, int, int, int], kv_heads: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(sum(shape))
    batch, heads, length, dim = shape
    q = torch.randn(batch, heads, length, dim, generator=generator).to(dtype)
    k = torch.randn(batch, kv_heads, length, dim, generator=generator).to(dtype)
    v = torch.randn(batch, kv_heads, length, dim, generator=generator).to(dtype)
    return q, k, v


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: PatternConfig,
    document_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    mask = compile_block_mask(
        pattern,
        batch=q.shape[0],
        q_len=q.shape[2],
        kv_len=k.shape[2],
        document_ids=document_ids,
        q=q.float(),
        k=k.float(),
    )
    metadata = AttentionMetadata(block_mask=mask)
    return ReferenceBackend().forward(q.float(), k.float(), v.float(), metadata).out


def test_attend_uses_the_configured_pattern_with_gqa() -> None:
    pattern = {"type": "window", "window": 10, "blockSize": 64}
    engine = build_engine(runtime_config(attention={"pattern": pattern}))
    q, k, v = qkv((2, 4, 130, 16), kv_heads=2)
    (out,) = engine.attend([AttentionInput(q=q, k=k, v=v)])
    expected = reference_attention(q, k, v, PatternConfig.model_validate(pattern))
    assert out.shape == q.shape
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_attend_applies_the_request_pattern_and_documents(engine: ModelEngine) -> None:
    q, k, v = qkv((1, 2, 100, 8), kv_heads=1)
    causal = PatternConfig(type=PatternType.CAUSAL, block_size=64)
    documents = PatternConfig(type=PatternType.DOCUMENT, block_size=64)
    document_ids = (torch.arange(100) >= 37).to(torch.int32).view(1, 100)
    out_causal, out_documents, out_dense = engine.attend(
        [
            AttentionInput(q=q, k=k, v=v, pattern=causal),
            AttentionInput(q=q, k=k, v=v, pattern=documents, document_ids=document_ids),
            AttentionInput(q=q, k=k, v=v),
        ]
    )
    torch.testing.assert_close(
        out_causal, reference_attention(q, k, v, causal), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        out_documents,
        reference_attention(q, k, v, documents, document_ids),
        atol=1e-5,
        rtol=1e-5,
    )
    torch.testing.assert_close(
        out_dense, reference_attention(q, k, v, PatternConfig()), atol=1e-5, rtol=1e-5
    )


def test_attend_reuses_shape_only_masks_and_never_mixes_them_up(engine: ModelEngine) -> None:
    """Requests of one shape and pattern share a compiled mask; another pattern, length or
    set of document ids gets its own (and answers as if compiled afresh)."""
    window = PatternConfig(type=PatternType.WINDOW, window=20, block_size=64)
    causal = PatternConfig(type=PatternType.CAUSAL, block_size=64)
    documents = PatternConfig(type=PatternType.DOCUMENT, block_size=64)
    cases: list[tuple[AttentionInput, torch.Tensor | None]] = []
    for length, pattern in [(101, window), (101, causal), (101, window), (71, window)] * 2:
        q, k, v = qkv((1, 2, length, 8), kv_heads=1)
        cases.append((AttentionInput(q=q, k=k, v=v, pattern=pattern), None))
    for split in (10, 60):
        q, k, v = qkv((1, 2, 100, 8), kv_heads=1)
        ids = (torch.arange(100) >= split).to(torch.int32).view(1, 100)
        item = AttentionInput(q=q, k=k, v=v, pattern=documents, document_ids=ids)
        cases.append((item, ids))
    cached_before = set(engine._block_masks)
    outputs = [engine.attend([item])[0] for item, _ in cases]
    for (item, document_ids), out in zip(cases, outputs, strict=True):
        assert item.pattern is not None
        expected = reference_attention(item.q, item.k, item.v, item.pattern, document_ids)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    added = set(engine._block_masks) - cached_before
    assert len(added) == 3, "window@101, causal@101, window@71; documents: none"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_attend_answers_in_the_request_dtype(engine: ModelEngine, dtype: torch.dtype) -> None:
    q, k, v = qkv((1, 2, 40, 32), kv_heads=2, dtype=dtype)
    (out,) = engine.attend([AttentionInput(q=q, k=k, v=v)])
    assert out.dtype == dtype
    assert out.device.type == "cpu"
    expected = reference_attention(q, k, v, PatternConfig())
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)


def bad(**changes: Any) -> AttentionInput:
    q, k, v = qkv((1, 4, 10, 8), kv_heads=2)
    fields: dict[str, Any] = {"q": q, "k": k, "v": v, **changes}
    return AttentionInput(**fields)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (bad(q=torch.zeros(4, 10, 8)), "q must have 4 dimensions"),
        (bad(k=torch.zeros(1, 2, 10, 8, dtype=torch.int32)), "k has dtype int32"),
        (bad(v=torch.zeros(1, 2, 10, 8, dtype=torch.float64)), "v has dtype float64"),
        (bad(q=torch.zeros(1, 4, 0, 8)), "q has an empty dimension"),
        (bad(q=torch.zeros(1, 4, 10, 8, dtype=torch.float16)), "share one dtype"),
        (bad(v=torch.zeros(1, 2, 11, 8)), "k and v must have the same shape"),
        (bad(q=torch.zeros(2, 4, 10, 8)), "same batch size"),
        (bad(q=torch.zeros(1, 4, 10, 16)), "same head size"),
        (bad(q=torch.zeros(1, 3, 10, 8)), r"query heads \(3\) must be a multiple"),
        (bad(q=torch.full((1, 4, 10, 8), float("nan"))), "q contains NaN"),
        (bad(v=torch.full((1, 2, 10, 8), float("inf"))), "v contains NaN or infinite"),
        (bad(pattern=PatternConfig(type=PatternType.DOCUMENT)), "needs document_ids"),
        (bad(document_ids=torch.zeros(1, 10, dtype=torch.int32)), "apply to pattern 'document'"),
    ],
)
def test_attend_refuses_bad_input_with_a_clear_message(
    engine: ModelEngine, item: AttentionInput, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        engine.attend([item])


def test_values_the_http_boundary_checked_are_not_scanned_again(engine: ModelEngine) -> None:
    item = dataclasses.replace(bad(q=torch.full((1, 4, 10, 8), float("nan"))), values_checked=True)
    (output,) = engine.attend([item])  # the caller vouched for the values: no second pass
    assert output.shape == item.q.shape


def test_attend_refuses_problems_too_large_for_the_dense_backend(engine: ModelEngine) -> None:
    q = torch.zeros(1, 1, 1 << 15, 1)
    with pytest.raises(ValueError, match=r"too large for the dense backend: .* = 1073741824"):
        engine.attend([AttentionInput(q=q, k=q, v=q)])


def test_explicit_reference_backend_serves_the_model() -> None:
    engine = build_engine(runtime_config(attention={"backend": "reference"}))
    assert engine.info.backend == "reference"
    assert engine.info.fallback_reason is None
    assert engine.embed(engine.encode(["reference"])).shape == (1, 384)


def test_explicit_sparse_backend_that_cannot_run_refuses_to_start() -> None:
    with pytest.raises(BackendUnavailableError, match="attention backend 'sparse' cannot run"):
        build_engine(runtime_config(attention={"backend": "sparse"}))


def test_model_directory_that_is_not_bert_refuses_to_start(tmp_path: Path) -> None:
    directory = tmp_path / "gpt"
    directory.mkdir()
    builtin = builtin_model_directory()
    for name in ("tokenizer.json", "model.safetensors"):
        (directory / name).symlink_to(builtin / name)
    config = json.loads((builtin / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(EngineStartError, match=r"gpt/config\.json: not a BERT-family model"):
        build_engine(runtime_config(model={"source": "path", "path": str(directory)}))


def test_model_from_a_path_serves_under_the_directory_name(tmp_path: Path) -> None:
    directory = tmp_path / "minilm-copy"
    shutil.copytree(builtin_model_directory(), directory, copy_function=os.symlink)
    engine = build_engine(runtime_config(model={"source": "path", "path": str(directory)}))
    assert engine.info.model == "minilm-copy"


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU"
)
def test_cuda_without_a_gpu_refuses_to_start() -> None:
    with pytest.raises(EngineStartError, match="no CUDA device"):
        choose_device(DeviceName.CUDA)
    assert choose_device(DeviceName.AUTO) == torch.device("cpu")
