"""Our encoder against sentence-transformers on the same model directory, and patterns in it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from sas_runtime.attention.dense import DenseBackend
from sas_runtime.attention.reference import ReferenceBackend
from sas_runtime.config import PatternConfig, PatternType, RuntimeConfig
from sas_runtime.model import SentenceEncoder
from sas_runtime.model_engine import ModelEngine, build_engine
from sas_runtime.model_files import builtin_model_directory, load_weights, read_model_directory

LONG_ENGLISH = " ".join(
    f"Sentence {i} of a long passage about block-sparse attention kernels on Hopper GPUs."
    for i in range(40)
)
TEXTS = [
    # short
    "hello",
    "Hello, world!",
    "The cat sat on the mat.",
    "A man is playing a guitar.",
    "Sparse attention skips blocks that a pattern rules out.",
    "Kubernetes operators reconcile desired and observed state.",
    "What is the capital of France?",
    "Paris is the capital of France.",
    "I love this!",
    "This is terrible.",
    "ok",
    "a",
    "The quick brown fox jumps over the lazy dog.",
    "GPUs multiply matrices quickly.",
    # empty-ish and whitespace
    "",
    " ",
    "\n\t  \n",
    "   padded on both sides   ",
    # punctuation and symbols
    "!!!???...",
    "(a) [b] {c} <d> 'e' \"f\"",
    "email@example.com https://example.org/path?q=1&r=2#frag",
    "--- *** ### @@@ $$$ %%% ^^^",
    "C++ / C# / F# / Obj-C; x = y + z * 2",
    "semi;colons;everywhere;without;spaces",
    # numbers
    "3.14159265358979323846",
    "1 2 3 4 5 6 7 8 9 10",
    "The meeting is at 10:30 on 2026-11-25, room 42B.",
    "-0.0001e+10 and 6.022e23",
    "In 1969, Apollo 11 landed; in 2026, GPUs reached 700 TFLOPS.",
    "$1,234,567.89 is more than €1.000.000,00",
    # other languages and scripts
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "素早い茶色の狐がのろまな犬を飛び越える。",
    "빠른 갈색 여우가 게으른 개를 뛰어넘는다.",
    "الثعلب البني السريع يقفز فوق الكلب الكسول",
    "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।",
    "Η γρήγορη καφέ αλεπού πηδά πάνω από το τεμπέλικο σκυλί.",
    "ข้อความภาษาไทยสั้น ๆ",
    "Mixed: English, Deutsch, 日本語, русский, and emoji 🚀🔥✨",
    "emoji only 😀😃😄😁",
    "Zalgo t̷̢e̵x̸t̴ with combining marks",
    "naïve café résumé coöperate",
    # case and repetition
    "ALL CAPS SENTENCE SHOUTING LOUDLY",
    "MiXeD CaSe WoRdS",
    "repeat " * 30,
    "token " * 300,
    # long and truncated past 256 tokens
    LONG_ENGLISH,
    LONG_ENGLISH.upper(),
    "Ein sehr langer deutscher Text. " * 60,
    "长文本测试。" * 200,
    " ".join(str(n) for n in range(600)),
    "word " * 255,
    "word " * 254,
    "A medium-length paragraph: attention maps each query to a weighted mix of values, "
    "the weights coming from a softmax over scaled dot products with the keys; sparse "
    "variants restrict which keys each query may see.",
    "Line one.\nLine two.\n\nLine four after a blank line.",
    "Tabs\tbetween\twords\tand\ttrailing\ttab\t",
]


@pytest.fixture(scope="module")
def engine() -> ModelEngine:
    return build_engine(RuntimeConfig.model_validate({"server": {"device": "cpu"}}))


@pytest.fixture(scope="module")
def sentence_transformers_embeddings() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(builtin_model_directory()), device="cpu")
    embeddings: np.ndarray = model.encode(TEXTS, batch_size=16, convert_to_numpy=True)
    return embeddings


def test_the_text_set_is_varied_enough(engine: ModelEngine) -> None:
    encoded = engine.encode(TEXTS)
    assert len(TEXTS) >= 50
    assert sum(text.truncated for text in encoded) >= 5
    assert max(len(text.ids) for text in encoded) == 256
    assert min(len(text.ids) for text in encoded) == 2


def test_embeddings_match_sentence_transformers(
    engine: ModelEngine, sentence_transformers_embeddings: np.ndarray, record_property: Any
) -> None:
    encoded = engine.encode(TEXTS)
    ours = np.concatenate([engine.embed(encoded[i : i + 16]) for i in range(0, len(TEXTS), 16)])
    theirs = sentence_transformers_embeddings
    assert ours.dtype == np.float32
    assert ours.shape == theirs.shape == (len(TEXTS), 384)
    cosine = (ours * theirs).sum(axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
    )
    max_abs = float(np.abs(ours - theirs).max())
    record_property("min_cosine", float(cosine.min()))
    record_property("max_abs_difference", max_abs)
    print(f"min cosine {cosine.min():.8f}, max abs difference {max_abs:.2e}")
    assert float(cosine.min()) >= 0.99999
    assert max_abs <= 1e-4


def test_padding_does_not_change_an_embedding(engine: ModelEngine) -> None:
    encoded = engine.encode(TEXTS[:20])
    together = engine.embed(encoded)
    alone = np.concatenate([engine.embed([text]) for text in encoded])
    np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    files = read_model_directory(builtin_model_directory())
    model = SentenceEncoder(files.config, files.pooling, normalize=files.normalize)
    model.encoder.load_hf_weights(load_weights(files), source="test")
    return model.eval()


def token_batch(engine: ModelEngine) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = engine.encode([LONG_ENGLISH, "short text", TEXTS[35], "word " * 150])
    lengths = torch.tensor([len(text.ids) for text in encoded])
    ids = torch.zeros(len(encoded), int(lengths.max()), dtype=torch.int64)
    for row, text in enumerate(encoded):
        ids[row, : len(text.ids)] = torch.tensor(text.ids)
    return ids, lengths


@pytest.mark.parametrize(
    "pattern",
    [
        PatternConfig(type=PatternType.WINDOW, window=512, block_size=64),
        PatternConfig(type=PatternType.TOPK, top_k=4, block_size=64),
        PatternConfig(type=PatternType.DOCUMENT, block_size=64),
    ],
    ids=lambda p: p.type.value,
)
def test_patterns_that_keep_every_pair_reproduce_dense(
    engine: ModelEngine, encoder: SentenceEncoder, pattern: PatternConfig
) -> None:
    ids, lengths = token_batch(engine)
    backend = DenseBackend()
    with torch.inference_mode():
        dense = encoder(ids, lengths, backend=backend, pattern=PatternConfig())
        patterned = encoder(ids, lengths, backend=backend, pattern=pattern)
    torch.testing.assert_close(patterned, dense, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "pattern",
    [
        PatternConfig(type=PatternType.CAUSAL, block_size=64),
        PatternConfig(type=PatternType.WINDOW, window=8, block_size=64),
        PatternConfig(type=PatternType.GLOBAL_WINDOW, window=4, global_tokens=64, block_size=64),
        PatternConfig(type=PatternType.TOPK, top_k=1, block_size=64),
        PatternConfig(type=PatternType.DILATED, dilation=2, block_size=64),
    ],
    ids=lambda p: p.type.value,
)
def test_restrictive_patterns_change_the_model_the_same_way_in_every_backend(
    engine: ModelEngine, encoder: SentenceEncoder, pattern: PatternConfig
) -> None:
    ids, lengths = token_batch(engine)
    with torch.inference_mode():
        dense = encoder(ids, lengths, backend=DenseBackend(), pattern=PatternConfig())
        patterned = encoder(ids, lengths, backend=DenseBackend(), pattern=pattern)
        reference = encoder(ids, lengths, backend=ReferenceBackend(), pattern=pattern)
    assert float((patterned - dense).abs().max()) > 1e-3
    torch.testing.assert_close(patterned, reference, atol=1e-5, rtol=1e-4)
