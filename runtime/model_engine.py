"""The real `Engine`: a BERT-family model and an attention backend on the CPU or a GPU.

`build_engine(config)` loads the configured model directory, picks the device and dtype, and
selects the attention backend (an explicit backend that cannot run raises
`BackendUnavailableError`, so the pod refuses to start; `auto` records why it fell back).
`embed` runs through `_forward_embeddings`, the one place a captured CUDA graph can later
replace the eager forward.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from tokenizers import Tokenizer

from sas_runtime.attention import AttentionBackend, AttentionSpec, select_backend
from sas_runtime.attention.registry import BackendSelection, BackendUnavailableError
from sas_runtime.block_mask import compile_block_mask
from sas_runtime.config import (
    AttentionBackendName,
    AttentionDType,
    DeviceName,
    PatternType,
    RuntimeConfig,
)
from sas_runtime.engine import AttentionInput, EncodedText, EngineInfo
from sas_runtime.model import SentenceEncoder
from sas_runtime.model_files import (
    ModelDirectoryError,
    ModelFiles,
    load_weights,
    model_directory,
    read_model_directory,
)

__all__ = [
    "ATTENTION_DTYPES",
    "EngineStartError",
    "ModelEngine",
    "build_engine",
    "check_attention_input",
    "choose_device",
]

ATTENTION_DTYPES: frozenset[torch.dtype] = frozenset({torch.float16, torch.bfloat16, torch.float32})
"""Dtypes /v1/attention accepts for q, k and v."""

_TORCH_DTYPES = {
    AttentionDType.BFLOAT16: torch.bfloat16,
    AttentionDType.FLOAT16: torch.float16,
    AttentionDType.FLOAT32: torch.float32,
}
_WARMUP_TEXTS = ("warm-up", "a somewhat longer warm-up sentence for the encoder")


class EngineStartError(Exception):
    """The engine cannot start with this configuration; the message says why."""


def choose_device(requested: DeviceName) -> torch.device:
    """cpu, cuda, or for auto the GPU when there is one."""
    if requested is DeviceName.CPU:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested is DeviceName.CUDA:
        raise EngineStartError("server.device is 'cuda' but no CUDA device is available")
    return torch.device("cpu")


class ModelEngine:
    """Engine over one SentenceEncoder. `encode` is thread-safe; `embed` and `attend` are
    called by one worker thread at a time (see `sas_runtime.engine.Engine`)."""

    def __init__(self, config: RuntimeConfig, *, device: torch.device) -> None:
        self._config = config
        self._device = device
        self._dtype = (
            torch.float32 if device.type == "cpu" else _TORCH_DTYPES[config.attention.dtype]
        )
        self._pattern = config.attention.pattern
        self._files = _read_files(config)
        self._max_length = _max_sequence_length(config, self._files)
        bert = self._files.config
        # Chosen before the weights load, so an explicit backend that cannot run fails fast.
        self._selection = select_backend(
            config.attention.backend,
            AttentionSpec(
                device=device,
                dtype=self._dtype,
                head_dim=bert.head_dim,
                num_heads=bert.num_attention_heads,
                num_kv_heads=bert.num_attention_heads,
                pattern=self._pattern,
            ),
        )
        self._tokenizer = _load_tokenizer(self._files, self._max_length)
        self._model = SentenceEncoder(
            self._files.config, self._files.pooling, normalize=self._files.normalize
        )
        self._model.encoder.load_hf_weights(
            load_weights(self._files), source=str(self._files.weights_path)
        )
        self._model.to(device=device, dtype=self._dtype).eval()
        self._info = EngineInfo(
            model=self._files.name,
            embedding_dim=self._model.embedding_dim,
            max_sequence_length=self._max_length,
            device=str(device),
            dtype=str(self._dtype).removeprefix("torch."),
            backend=self._selection.backend.name,
            pattern=self._pattern.type.value,
            fallback_reason=self._selection.fallback_reason,
            skipped=dict(self._selection.skipped),
        )

    @property
    def info(self) -> EngineInfo:
        return self._info

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        """Tokenize with the model's special tokens, cut to the maximum length and flagged."""
        if self._files.do_lower_case:
            texts = [text.lower() for text in texts]
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        return [
            EncodedText(ids=tuple(encoding.ids), truncated=bool(encoding.overflowing))
            for encoding in encodings
        ]

    def embed(self, batch: Sequence[EncodedText]) -> np.ndarray:
        """float32 [len(batch), embedding_dim], the batch padded to its longest text."""
        if not batch:
            return np.zeros((0, self._model.embedding_dim), dtype=np.float32)
        vocab_size = self._files.config.vocab_size
        for index, text in enumerate(batch):
            if not 1 <= len(text.ids) <= self._max_length:
                raise ValueError(
                    f"input {index} has {len(text.ids)} tokens; expected 1 to {self._max_length}"
                )
            if min(text.ids) < 0 or max(text.ids) >= vocab_size:
                raise ValueError(f"input {index} has token ids outside [0, {vocab_size})")
        longest = max(len(text.ids) for text in batch)
        pad = self._files.config.pad_token_id
        input_ids = torch.tensor(
            [list(text.ids) + [pad] * (longest - len(text.ids)) for text in batch],
            dtype=torch.int64,
        )
        lengths = torch.tensor([len(text.ids) for text in batch], dtype=torch.int64)
        embeddings = self._forward_embeddings(input_ids.to(self._device), lengths.to(self._device))
        result: np.ndarray = embeddings.cpu().numpy()
        return result

    def _forward_embeddings(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The model forward on the device: [B, S] ids, [B] lengths -> float32 [B, hidden].

        The seam for CUDA graphs: a graph captured for this batch shape can replace the call."""
        with torch.inference_mode():
            embeddings: torch.Tensor = self._model(
                input_ids, lengths, backend=self._selection.backend, pattern=self._pattern
            )
        return embeddings

    def attend(self, batch: Sequence[AttentionInput]) -> list[torch.Tensor]:
        """One output per input, shaped and typed like its q, on the CPU."""
        return [self._attend_one(item) for item in batch]

    def _attend_one(self, item: AttentionInput) -> torch.Tensor:
        check_attention_input(item)
        pattern = item.pattern or self._pattern
        batch, heads, q_len, head_dim = item.q.shape
        compute_dtype = torch.float32 if self._device.type == "cpu" else item.q.dtype
        backend = self._request_backend(
            AttentionSpec(
                device=self._device,
                dtype=compute_dtype,
                head_dim=head_dim,
                num_heads=heads,
                num_kv_heads=item.k.shape[1],
                pattern=pattern,
            )
        )
        scores = batch * heads * q_len * item.k.shape[2]
        if backend.max_scores is not None and scores > backend.max_scores:
            raise ValueError(
                f"attention problem too large for the {backend.name} backend: "
                f"batch·heads·q_len·kv_len = {scores} exceeds {backend.max_scores}"
            )
        q, k, v = (t.to(device=self._device, dtype=compute_dtype) for t in (item.q, item.k, item.v))
        document_ids = item.document_ids.to(self._device) if item.document_ids is not None else None
        with torch.inference_mode():
            block_mask = compile_block_mask(
                pattern,
                batch=batch,
                q_len=q_len,
                kv_len=k.shape[2],
                document_ids=document_ids,
                q=q,
                k=k,
                device=self._device,
            )
            out = backend.forward(q, k, v, backend.build_metadata(block_mask)).out
        return out.to(device="cpu", dtype=item.q.dtype)

    def _request_backend(self, spec: AttentionSpec) -> AttentionBackend:
        """The serving backend if it can run this request; for `auto`, else the first that can.
        An explicit backend that cannot run the request is the client's problem (ValueError)."""
        if not self._selection.backend.validate_configuration(spec):
            return self._selection.backend
        try:
            return _select_cached(self._config.attention.backend, spec).backend
        except BackendUnavailableError as exc:
            raise ValueError(str(exc)) from exc

    def warmup(self) -> None:
        """Run one embedding batch and one attention call so first requests pay no set-up."""
        self.embed(self.encode(_WARMUP_TEXTS))
        if self._pattern.type is PatternType.DOCUMENT:
            return
        bert = self._files.config
        shape = (1, bert.num_attention_heads, 8, bert.head_dim)
        sample = torch.zeros(shape, dtype=self._dtype)
        self.attend([AttentionInput(q=sample, k=sample, v=sample)])


@functools.lru_cache(maxsize=64)
def _select_cached(choice: AttentionBackendName, spec: AttentionSpec) -> BackendSelection:
    return select_backend(choice, spec)


def check_attention_input(item: AttentionInput) -> None:
    """Raise ValueError with a clear message when q, k, v (and document ids) cannot be served."""
    tensors = {"q": item.q, "k": item.k, "v": item.v}
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a tensor")
        if tensor.dim() != 4:
            raise ValueError(f"{name} must have 4 dimensions, got shape {list(tensor.shape)}")
        if tensor.dtype not in ATTENTION_DTYPES:
            allowed = ", ".join(sorted(str(d).removeprefix("torch.") for d in ATTENTION_DTYPES))
            raise ValueError(
                f"{name} has dtype {str(tensor.dtype).removeprefix('torch.')}; expected one of {allowed}"
            )
        if 0 in tensor.shape:
            raise ValueError(f"{name} has an empty dimension: shape {list(tensor.shape)}")
    q, k, v = item.q, item.k, item.v
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(
            f"k and v must have the same shape, got {list(k.shape)} and {list(v.shape)}"
        )
    if q.shape[0] != k.shape[0]:
        raise ValueError(
            f"q and k must have the same batch size, got {q.shape[0]} and {k.shape[0]}"
        )
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k must have the same head size, got {q.shape[3]} and {k.shape[3]}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(
            f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})"
        )
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} contains NaN or infinite values")


def _read_files(config: RuntimeConfig) -> ModelFiles:
    try:
        return read_model_directory(model_directory(config.model), name=config.model.name)
    except ModelDirectoryError as exc:
        raise EngineStartError(str(exc)) from exc


def _max_sequence_length(config: RuntimeConfig, files: ModelFiles) -> int:
    requested = config.model.max_sequence_length
    if requested is None:
        return files.max_sequence_length
    limit = files.config.max_position_embeddings
    if requested > limit:
        raise EngineStartError(
            f"model.maxSequenceLength {requested} exceeds the model's "
            f"max_position_embeddings ({limit}, {files.directory / 'config.json'})"
        )
    return requested


def _load_tokenizer(files: ModelFiles, max_length: int) -> Tokenizer:
    try:
        tokenizer = Tokenizer.from_file(str(files.tokenizer_path))
    except Exception as exc:
        raise EngineStartError(f"{files.tokenizer_path}: cannot load tokenizer ({exc})") from exc
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def build_engine(config: RuntimeConfig) -> ModelEngine:
    """Load the configured model on the configured device with its attention backend.

    Raises EngineStartError (bad model directory, missing device) or BackendUnavailableError
    (an explicit backend that cannot run the model); both messages are meant for the pod log.
    """
    return ModelEngine(config, device=choose_device(config.server.device))
