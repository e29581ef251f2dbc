"""The engine contract: what the batcher and the HTTP app may ask of the model side.

The batcher is written against `Engine` only, so tests inject a fake engine instead of
monkeypatching; the real implementation (model + attention backend on CPU or GPU) lives in
`sas_runtime.model_engine`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np
    import torch

    from sas_runtime.config import PatternConfig

__all__ = ["AttentionInput", "EncodedText", "Engine", "EngineInfo", "EngineView", "TextEncoder"]


@dataclass(frozen=True, slots=True)
class EncodedText:
    """One tokenized text, ready for a forward pass.

    ids: token ids with the model's special tokens, at most the model's sequence length.
    truncated: the text was longer and was cut to fit.
    """

    ids: tuple[int, ...]
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class AttentionInput:
    """One /v1/attention request.

    q: [batch, heads, q_len, head_dim]; k, v: [batch, kv_heads, kv_len, head_dim], heads a
    multiple of kv_heads (GQA). All on the CPU, one floating dtype.
    pattern: the pattern to apply; None means the service's configured pattern.
    document_ids: [batch, kv_len] int32 segment ids (pattern 'document' only), else None.
    values_checked: q, k and v were already found finite (the HTTP boundary checks every
        request), so the engine skips its own pass over the values.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    pattern: PatternConfig | None = None
    document_ids: torch.Tensor | None = None
    values_checked: bool = False


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What /v1/models and the CR status report about the running engine.

    backend: the attention backend actually serving ('sparse', 'dense', 'reference').
    fallback_reason: why the configured choice is not the one serving; None when it is.
    skipped: each backend `auto` passed over, with its reasons.
    fallback_counts: batches that ran dense instead of sparse, by reason label (cumulative).
    warmup_seconds: how long warm-up took (CUDA graph capture included); None before it ran.
    cuda_graphs: graphs captured at warm-up; cuda_graph_memory_bytes: device memory they hold.
    """

    model: str
    embedding_dim: int
    max_sequence_length: int
    device: str
    dtype: str
    backend: str
    pattern: str
    fallback_reason: str | None = None
    skipped: dict[str, list[str]] = field(default_factory=dict)
    fallback_counts: dict[str, int] = field(default_factory=dict)
    warmup_seconds: float | None = None
    cuda_graphs: int = 0
    cuda_graph_memory_bytes: int = 0


class TextEncoder(Protocol):
    """The model's tokenizer. Thread-safe; cheap enough to call on the event loop."""

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        """Tokenize texts; texts too long are truncated and flagged (the app decides on 413)."""
        ...


class EngineView(TextEncoder, Protocol):
    """What the HTTP app reads of the engine: its info and its tokenizer. In a front-end
    process the engine itself runs in the engine process (`sas_runtime.engine_client`)."""

    @property
    def info(self) -> EngineInfo: ...


class Engine(EngineView, Protocol):
    """Runs model work. `encode` is cheap and thread-safe; `embed` and `attend` are called from
    one worker thread at a time by the batcher, with batches it has already sized to the
    configured limits. They raise ValueError for input the engine cannot take (the app turns it
    into 4xx); any other exception is an engine failure."""

    def embed(self, batch: Sequence[EncodedText]) -> np.ndarray:
        """Embed a batch: float32 array [len(batch), embedding_dim], pooled and normalised as
        the model's sentence-transformers config says."""
        ...

    def attend(self, batch: Sequence[AttentionInput]) -> list[torch.Tensor]:
        """Attention outputs, one per input, each shaped and typed like its q, on the CPU."""
        ...

    def warmup(self) -> None:
        """Load, compile and capture whatever the first request would otherwise wait for."""
        ...
