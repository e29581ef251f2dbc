"""A deterministic stand-in for the model engine, injected where tests need control over the
model side (batch contents, slowness, refusals) without loading a model."""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sas_runtime.config import PatternType, RuntimeConfig
from sas_runtime.engine import AttentionInput, EncodedText, EngineInfo

REFUSED_WORD = "refuse-me"
"""A text holding this word makes `embed` raise ValueError (input the engine cannot take)."""

_CLS, _SEP = 1, 2


class FakeEngine:
    """Whitespace tokenizer; an embedding is the normalised histogram of token ids mod `dim`
    (so it depends on the text only, never on the batch); attention is exact SDPA for the
    dense and causal patterns. Records every batch; `gate` (when given) holds each forward
    until it is set; `forward_seconds` slows each forward down; `fallback_reason` makes it
    report serving dense in place of sparse."""

    def __init__(
        self,
        *,
        max_length: int = 32,
        dim: int = 16,
        forward_seconds: float = 0.0,
        gate: threading.Event | None = None,
        pattern: str = "dense",
        fallback_reason: str | None = None,
    ) -> None:
        self.max_length = max_length
        self.dim = dim
        self.forward_seconds = forward_seconds
        self.gate = gate
        self.warmed = False
        self.batches: list[tuple[str, int]] = []
        self.batch_lengths: list[list[int]] = []
        self._info = EngineInfo(
            model="fake-minilm",
            embedding_dim=dim,
            max_sequence_length=max_length,
            device="cpu",
            dtype="float32",
            backend="dense",
            pattern=pattern,
            fallback_reason=fallback_reason,
            skipped={} if fallback_reason is None else {"sparse": [fallback_reason]},
        )

    @property
    def info(self) -> EngineInfo:
        return self._info

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        encoded = []
        for text in texts:
            ids = [_CLS, *(zlib.crc32(word.encode()) % 10_000 + 3 for word in text.split()), _SEP]
            truncated = len(ids) > self.max_length
            if truncated:
                ids = [*ids[: self.max_length - 1], _SEP]
            encoded.append(EncodedText(tuple(ids), truncated))
        return encoded

    def embed(self, batch: Sequence[EncodedText]) -> np.ndarray:
        self._forward("embed", len(batch))
        self.batch_lengths.append([len(text.ids) for text in batch])
        refused = zlib.crc32(REFUSED_WORD.encode()) % 10_000 + 3
        out = np.zeros((len(batch), self.dim), dtype=np.float32)
        for row, text in enumerate(batch):
            if refused in text.ids:
                raise ValueError(f"the fake engine refuses texts with {REFUSED_WORD!r}")
            for token in text.ids:
                out[row, token % self.dim] += 1.0
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out

    def attend(self, batch: Sequence[AttentionInput]) -> list[torch.Tensor]:
        self._forward("attend", len(batch))
        outputs = []
        for item in batch:
            pattern = item.pattern.type if item.pattern is not None else PatternType.DENSE
            if pattern not in (PatternType.DENSE, PatternType.CAUSAL):
                raise ValueError(f"the fake engine runs dense and causal only, not {pattern}")
            out = F.scaled_dot_product_attention(
                item.q.float(),
                item.k.float(),
                item.v.float(),
                is_causal=pattern is PatternType.CAUSAL,
                enable_gqa=True,
            )
            outputs.append(out.to(item.q.dtype))
        return outputs

    def warmup(self) -> None:
        self.warmed = True

    def _forward(self, kind: str, size: int) -> None:
        self.batches.append((kind, size))
        if self.gate is not None:
            self.gate.wait()
        if self.forward_seconds:
            time.sleep(self.forward_seconds)


def build_fake_engine(config: RuntimeConfig) -> FakeEngine:
    """Engine factory for `python -m sas_runtime serve --engine fake_engine:build_fake_engine`."""
    return FakeEngine(
        max_length=config.model.max_sequence_length or 32,
        pattern=config.attention.pattern.type.value,
    )


def build_fake_text_encoder(config: RuntimeConfig) -> FakeEngine:
    """The fake engine's whitespace tokenizer, for front-end processes
    (`--text-encoder tests.fake_engine:build_fake_text_encoder`)."""
    return build_fake_engine(config)


def build_slow_fake_engine(config: RuntimeConfig) -> FakeEngine:
    """Like build_fake_engine, with 50 ms per forward: work stays in flight long enough to
    watch (drain tests)."""
    return FakeEngine(
        max_length=config.model.max_sequence_length or 32,
        pattern=config.attention.pattern.type.value,
        forward_seconds=0.05,
    )


async def eventually(condition: Callable[[], bool], *, within: float = 5.0) -> None:
    """Wait (polling every millisecond) until `condition()` holds; fail after `within` s."""
    for _ in range(int(within * 1000)):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the condition never held")
