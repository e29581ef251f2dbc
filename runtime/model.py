"""The BERT-family sentence encoder, written on our attention backend interface.

`SentenceEncoder` turns padded token ids into pooled (and, if the model says so, normalised)
embeddings. Every self-attention goes through an `AttentionBackend` with a block mask compiled
from the configured pattern plus the batch's padding, so sparse patterns plug in unchanged.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn
from torch.nn import functional

from sas_runtime.attention.backend import AttentionBackend, AttentionMetadata
from sas_runtime.block_mask import compile_block_mask, pattern_needs_scores
from sas_runtime.config import PatternConfig, PatternType
from sas_runtime.model_files import BertConfig, ModelDirectoryError, PoolingMode

__all__ = [
    "BertEmbeddings",
    "BertEncoder",
    "BertLayer",
    "SentenceEncoder",
    "padded_attention_metadata",
    "pool_embeddings",
]

# Hugging Face BertModel parameter names -> ours.
_WEIGHT_NAMES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^embeddings\.LayerNorm\.(weight|bias)$"), r"embeddings.norm.\1"),
    (
        re.compile(r"^embeddings\.(word|position|token_type)_embeddings\.weight$"),
        r"embeddings.\1.weight",
    ),
    (
        re.compile(r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$"),
        r"layers.\1.\2.\3",
    ),
    (
        re.compile(r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)$"),
        r"layers.\1.attention_out.\2",
    ),
    (
        re.compile(r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.(weight|bias)$"),
        r"layers.\1.attention_norm.\2",
    ),
    (
        re.compile(r"^encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)$"),
        r"layers.\1.ffn_in.\2",
    ),
    (re.compile(r"^encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)$"), r"layers.\1.ffn_out.\2"),
    (
        re.compile(r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.(weight|bias)$"),
        r"layers.\1.ffn_norm.\2",
    ),
]
# Present in checkpoints, unused by a sentence encoder.
_UNUSED_WEIGHTS = re.compile(r"^(pooler\.|embeddings\.position_ids$|cls\.)")


class BertEmbeddings(nn.Module):
    """Word + absolute position + token type (always 0) embeddings, then LayerNorm."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        embedded = self.word(input_ids) + self.position(positions) + self.token_type.weight[0]
        out: Tensor = self.norm(embedded)
        return out


class BertLayer(nn.Module):
    """Post-norm transformer layer: self-attention through the backend, then a GELU MLP."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attention_out = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(hidden, config.intermediate_size)
        self.ffn_out = nn.Linear(config.intermediate_size, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)

    def split_heads(self, x: Tensor) -> Tensor:
        """[B, S, hidden] -> [B, heads, S, head_dim]."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, attend: _Attend) -> Tensor:
        q, k, v = (
            self.split_heads(self.query(x)),
            self.split_heads(self.key(x)),
            self.split_heads(self.value(x)),
        )
        context = attend(q, k, v).transpose(1, 2).reshape(x.shape)
        x = self.attention_norm(x + self.attention_out(context))
        out: Tensor = self.ffn_norm(x + self.ffn_out(functional.gelu(self.ffn_in(x))))
        return out


def padded_attention_metadata(
    backend: AttentionBackend, pattern: PatternConfig, lengths: Tensor, max_length: int
) -> AttentionMetadata:
    """Self-attention metadata for a batch padded to `max_length`, the padding always masked
    (even when no text is padded), so its tensors' shapes depend only on the batch shape: what
    a captured CUDA graph needs to refresh them in place. Not for top-k (it needs scores)."""
    return _compile_metadata(backend, pattern, lengths, max_length, lengths, None, None)


def _compile_metadata(
    backend: AttentionBackend,
    pattern: PatternConfig,
    lengths: Tensor,
    max_length: int,
    kv_lengths: Tensor | None,
    q: Tensor | None,
    k: Tensor | None,
) -> AttentionMetadata:
    batch = lengths.shape[0]
    # A text is one document: 'document' over a text is all-zero document ids.
    document_ids = (
        torch.zeros(batch, max_length, dtype=torch.int32, device=lengths.device)
        if pattern.type is PatternType.DOCUMENT
        else None
    )
    block_mask = compile_block_mask(
        pattern,
        batch=batch,
        q_len=max_length,
        kv_len=max_length,
        kv_lengths=kv_lengths,
        document_ids=document_ids,
        q=q,
        k=k,
        device=lengths.device,
    )
    return backend.build_metadata(block_mask)


class _Attend:
    """Self-attention for one forward pass: one block mask for the batch (given, or compiled
    here), or one per layer when the pattern picks blocks from the layer's own scores (top-k)."""

    def __init__(
        self,
        backend: AttentionBackend,
        pattern: PatternConfig,
        lengths: Tensor,
        max_length: int,
        metadata: AttentionMetadata | None,
    ) -> None:
        self.backend = backend
        self.pattern = pattern
        self.lengths = lengths
        self.length = max_length
        self.shared = metadata
        self.kv_lengths: Tensor | None = None
        if metadata is None:
            if not bool((lengths == max_length).all()):
                self.kv_lengths = lengths
            if not pattern_needs_scores(pattern):
                self.shared = self._metadata(None, None)

    def _metadata(self, q: Tensor | None, k: Tensor | None) -> AttentionMetadata:
        return _compile_metadata(
            self.backend, self.pattern, self.lengths, self.length, self.kv_lengths, q, k
        )

    def __call__(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        metadata = self.shared if self.shared is not None else self._metadata(q, k)
        return self.backend.forward(q, k, v, metadata).out


class BertEncoder(nn.Module):
    """BertModel's encoder stack (no pooler head): token ids -> final hidden states."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def load_hf_weights(self, weights: dict[str, Tensor], *, source: str) -> None:
        """Load a Hugging Face BertModel state dict; name every missing or unknown tensor."""
        renamed: dict[str, Tensor] = {}
        unknown = []
        for key, tensor in weights.items():
            if _UNUSED_WEIGHTS.match(key):
                continue
            for pattern, replacement in _WEIGHT_NAMES:
                if pattern.match(key):
                    renamed[pattern.sub(replacement, key)] = tensor
                    break
            else:
                unknown.append(key)
        expected = self.state_dict()
        missing = sorted(set(expected) - set(renamed))
        unknown += sorted(set(renamed) - set(expected))
        if missing or unknown:
            raise ModelDirectoryError(
                f"{source}: weights do not fit the BERT config (missing: {missing[:5]}, "
                f"unexpected: {unknown[:5]})"
            )
        for key, tensor in renamed.items():
            if tensor.shape != expected[key].shape:
                raise ModelDirectoryError(
                    f"{source}: tensor for {key} has shape {list(tensor.shape)}, "
                    f"config.json implies {list(expected[key].shape)}"
                )
        self.load_state_dict(renamed)

    def forward(
        self,
        input_ids: Tensor,
        lengths: Tensor,
        *,
        backend: AttentionBackend,
        pattern: PatternConfig,
        metadata: AttentionMetadata | None = None,
    ) -> Tensor:
        """input_ids [B, S] padded after each sequence's `lengths` [B] -> hidden [B, S, hidden].

        metadata: the batch's self-attention metadata when the caller built it (a captured
        CUDA graph does, with `padded_attention_metadata`); compiled here when None."""
        attend = _Attend(backend, pattern, lengths, input_ids.shape[1], metadata)
        x: Tensor = self.embeddings(input_ids)
        for layer in self.layers:
            x = layer(x, attend)
        return x


def pool_embeddings(
    hidden: Tensor, lengths: Tensor, pooling: PoolingMode, *, normalize: bool
) -> Tensor:
    """hidden [B, S, D], valid lengths [B] -> float32 [B, D], as sentence-transformers pools."""
    hidden = hidden.float()
    valid = torch.arange(hidden.shape[1], device=hidden.device).view(1, -1) < lengths.view(-1, 1)
    valid = valid.unsqueeze(-1)
    if pooling is PoolingMode.CLS:
        pooled = hidden[:, 0]
    elif pooling is PoolingMode.MAX:
        pooled = hidden.masked_fill(~valid, float("-inf")).max(dim=1).values
    else:
        total = (hidden * valid).sum(dim=1)
        count = valid.sum(dim=1).clamp(min=1).float()
        pooled = total / (count.sqrt() if pooling is PoolingMode.MEAN_SQRT_LEN else count)
    return functional.normalize(pooled, p=2.0, dim=1) if normalize else pooled


class SentenceEncoder(nn.Module):
    """Token ids -> sentence embeddings: encoder, pooling, optional L2 normalisation."""

    def __init__(self, config: BertConfig, pooling: PoolingMode, *, normalize: bool) -> None:
        super().__init__()
        self.encoder = BertEncoder(config)
        self.pooling = pooling
        self.normalize = normalize

    @property
    def embedding_dim(self) -> int:
        return self.encoder.config.hidden_size

    def forward(
        self,
        input_ids: Tensor,
        lengths: Tensor,
        *,
        backend: AttentionBackend,
        pattern: PatternConfig,
        metadata: AttentionMetadata | None = None,
    ) -> Tensor:
        """input_ids [B, S] (padded), lengths [B] -> float32 embeddings [B, hidden]; metadata as
        for `BertEncoder.forward`."""
        hidden = self.encoder(
            input_ids, lengths, backend=backend, pattern=pattern, metadata=metadata
        )
        return pool_embeddings(hidden, lengths, self.pooling, normalize=self.normalize)
