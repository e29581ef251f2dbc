"""The real `Engine`: a BERT-family model and an attention backend on the CPU or a GPU.

`build_engine(config)` loads the configured model directory, picks the device and dtype, and
selects the attention backend (an explicit backend that cannot run raises
`BackendUnavailableError`, so the pod refuses to start; `auto` records why it fell back).
`embed` runs through `_forward_embeddings`, where a CUDA graph captured at warm-up
(`sas_runtime.cuda_graphs`) replaces the eager forward when a bucket holds the batch. Whatever
runs on the sparse backend goes through the correctness guard (`sas_runtime.sparse_guard`):
launch checks, a kernel error sends the batch to dense, and a sampled dense comparison that
fails switches the service to dense for good. NVTX ranges mark batch assembly, host-to-device
copies, the forward and the device-to-host copy (no-ops without a profiler attached).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import nvtx
import torch
from tokenizers import Tokenizer

from sas_runtime.attention import AttentionBackend, AttentionSpec, select_backend
from sas_runtime.attention.backend import AttentionMetadata
from sas_runtime.attention.registry import (
    BACKEND_PATHS,
    BackendUnavailableError,
    load_backend_class,
)
from sas_runtime.block_mask import BlockMask, compile_block_mask, pattern_needs_scores
from sas_runtime.config import (
    AttentionBackendName,
    AttentionDType,
    DeviceName,
    PatternConfig,
    PatternType,
    RuntimeConfig,
)
from sas_runtime.cuda_graphs import GraphBuckets, GraphedForward, pad_batch
from sas_runtime.engine import AttentionInput, EncodedText, EngineInfo
from sas_runtime.model import SentenceEncoder, padded_attention_metadata
from sas_runtime.model_files import (
    ModelDirectoryError,
    ModelFiles,
    load_weights,
    model_directory,
    read_model_directory,
)
from sas_runtime.sparse_guard import (
    FALLBACK_KERNEL_ERROR,
    FALLBACK_LAUNCH_CHECK,
    GuardedSparseBackend,
    SparseGuard,
    SparseLaunchError,
)
from sas_runtime.tensor_codec import FLOAT_DTYPES, all_finite

__all__ = [
    "ATTENTION_DTYPES",
    "EngineStartError",
    "ModelEngine",
    "ModelTextEncoder",
    "build_engine",
    "build_text_encoder",
    "check_attention_input",
    "choose_device",
]

ATTENTION_DTYPES: frozenset[torch.dtype] = frozenset(FLOAT_DTYPES.values())
"""Dtypes /v1/attention accepts for q, k and v (the floating dtypes of the wire format)."""

_TORCH_DTYPES = {
    AttentionDType.BFLOAT16: torch.bfloat16,
    AttentionDType.FLOAT16: torch.float16,
    AttentionDType.FLOAT32: torch.float32,
}
_BLOCK_MASK_CACHE_SIZE = 32
"""Shape-only block masks kept for /v1/attention requests (oldest dropped first)."""
_WARMUP_TEXTS = ("warm-up", "a somewhat longer warm-up sentence for the encoder")
_NVTX_DOMAIN = "sas"

logger = logging.getLogger(__name__)


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
    called by one worker thread at a time (see `sas_runtime.engine.Engine`).

    backend_paths: attention backend name -> 'module:ClassName' (tests register fake backends
    here, e.g. a faulty `sparse`, as `select_backend` takes them)."""

    def __init__(
        self,
        config: RuntimeConfig,
        *,
        device: torch.device,
        backend_paths: Mapping[AttentionBackendName, str] = BACKEND_PATHS,
    ) -> None:
        self._config = config
        self._paths = backend_paths
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
            backend_paths,
        )
        self._guard = SparseGuard(config.attention.validation)
        self._dense = load_backend_class(AttentionBackendName.DENSE, backend_paths)()
        self._model_backend = self._guarded(self._selection.backend)
        self._graphs: GraphedForward | None = None
        self._request_backends: dict[AttentionSpec, AttentionBackend] = {}
        self._block_masks: dict[tuple[PatternConfig, int, int, int], BlockMask] = {}
        self._sparse_batch_counted = False
        self._text_encoder = ModelTextEncoder(self._files, self._max_length)
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

    @property
    def guard(self) -> SparseGuard:
        """The correctness guard: its last sampled RMSE, whether it tripped, fallback counts."""
        return self._guard

    def _guarded(self, backend: AttentionBackend) -> AttentionBackend:
        """The sparse backend behind the correctness guard; any other backend as it is."""
        if backend.name != AttentionBackendName.SPARSE.value:
            return backend
        return GuardedSparseBackend(backend, self._dense, self._guard)

    def _observe_guard(self) -> None:
        """After a batch: a tripped guard moves the model to dense (dropping graphs captured on
        sparse) and becomes the fallback reason; fallback counts reach `info`."""
        tripped = self._guard.tripped
        info = self._info
        if tripped is not None and info.fallback_reason != tripped:
            if isinstance(self._model_backend, GuardedSparseBackend):
                self._model_backend = self._dense
                self._graphs = None
                info = dataclasses.replace(info, backend=self._dense.name, cuda_graphs=0)
            info = dataclasses.replace(info, fallback_reason=tripped)
        counts = self._guard.fallback_counts
        if counts != info.fallback_counts:
            info = dataclasses.replace(info, fallback_counts=counts)
        self._info = info

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        """Tokenize with the model's special tokens, cut to the maximum length and flagged."""
        return self._text_encoder.encode(texts)

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
        embeddings = self._forward_embeddings([text.ids for text in batch])
        with nvtx.annotate("sas.embed.d2h", domain=_NVTX_DOMAIN):
            result: np.ndarray = embeddings.cpu().numpy()
        return result

    def _forward_embeddings(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Token ids of a batch -> float32 [B, hidden] on the device: the captured graph of the
        batch's bucket when there is one, else the eager forward. On the sparse backend the batch
        is counted by the guard (a sampled batch runs eagerly, so the guard can compare), and a
        launch check or kernel error reruns it on dense."""
        sparse = isinstance(self._model_backend, GuardedSparseBackend)
        if sparse:
            self._guard.begin_sparse_batch()
        try:
            if self._graphs is not None and not self._guard.sampling:
                graphed = self._graphs.run(ids)
                if graphed is not None:
                    return graphed
            if not sparse:
                return self._eager_embeddings(ids, self._model_backend)
            return self._sparse_or_dense(
                lambda: self._eager_embeddings(ids, self._model_backend),
                lambda: self._eager_embeddings(ids, self._dense),
            )
        finally:
            self._guard.sampling = False
            self._observe_guard()

    def _sparse_or_dense(
        self, sparse: Callable[[], torch.Tensor], dense: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        """`sparse()`, or `dense()` when a launch check or a kernel error stops it (counted by
        the guard as a fallback, never failing the request)."""
        try:
            return sparse()
        except SparseLaunchError as exc:
            self._guard.count_fallback(FALLBACK_LAUNCH_CHECK, exc)
        except RuntimeError as exc:
            self._guard.count_fallback(FALLBACK_KERNEL_ERROR, exc)
        return dense()

    def _eager_embeddings(
        self, ids: Sequence[Sequence[int]], backend: AttentionBackend
    ) -> torch.Tensor:
        with nvtx.annotate("sas.embed.assemble", domain=_NVTX_DOMAIN):
            longest = max(len(text) for text in ids)
            input_ids, lengths = pad_batch(
                ids, (len(ids), longest), self._files.config.pad_token_id
            )
        with nvtx.annotate("sas.embed.h2d", domain=_NVTX_DOMAIN):
            input_ids, lengths = input_ids.to(self._device), lengths.to(self._device)
        with nvtx.annotate("sas.embed.forward", domain=_NVTX_DOMAIN), torch.inference_mode():
            embeddings: torch.Tensor = self._model(
                input_ids, lengths, backend=backend, pattern=self._pattern
            )
        return embeddings

    def _graph_forward(
        self, input_ids: torch.Tensor, lengths: torch.Tensor, metadata: AttentionMetadata
    ) -> torch.Tensor:
        """The forward a CUDA graph captures: the model on prebuilt attention metadata."""
        embeddings: torch.Tensor = self._model(
            input_ids,
            lengths,
            backend=self._model_backend,
            pattern=self._pattern,
            metadata=metadata,
        )
        return embeddings

    def _graph_metadata(self, lengths: torch.Tensor, length: int) -> AttentionMetadata:
        return padded_attention_metadata(self._model_backend, self._pattern, lengths, length)

    def attend(self, batch: Sequence[AttentionInput]) -> list[torch.Tensor]:
        """One output per input, shaped and typed like its q, on the CPU. The first input that
        runs sparse counts the batch for the guard (and is the one sampled when due)."""
        self._sparse_batch_counted = False
        try:
            return [self._attend_one(item) for item in batch]
        finally:
            self._guard.sampling = False
            self._observe_guard()

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
        with nvtx.annotate("sas.attend.h2d", domain=_NVTX_DOMAIN):
            q, k, v = (
                t.to(device=self._device, dtype=compute_dtype) for t in (item.q, item.k, item.v)
            )
            document_ids = (
                item.document_ids.to(self._device) if item.document_ids is not None else None
            )
        with torch.inference_mode():
            block_mask = self._request_block_mask(pattern, q, k, document_ids)
            out = self._attention_forward(backend, q, k, v, block_mask)
        with nvtx.annotate("sas.attend.d2h", domain=_NVTX_DOMAIN):
            return out.to(device="cpu", dtype=item.q.dtype)

    def _request_block_mask(
        self,
        pattern: PatternConfig,
        q: torch.Tensor,
        k: torch.Tensor,
        document_ids: torch.Tensor | None,
    ) -> BlockMask:
        """The block mask of one request; masks that depend on the shape alone (not on
        document ids or scores) are kept for the next request of that shape."""
        batch, _, q_len, _ = q.shape
        key = None
        if document_ids is None and not pattern_needs_scores(pattern):
            key = (pattern, batch, q_len, k.shape[2])
            cached = self._block_masks.get(key)
            if cached is not None:
                return cached
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
        if key is not None:
            if len(self._block_masks) >= _BLOCK_MASK_CACHE_SIZE:
                del self._block_masks[next(iter(self._block_masks))]
            self._block_masks[key] = block_mask
        return block_mask

    def _attention_forward(
        self,
        backend: AttentionBackend,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        block_mask: BlockMask,
    ) -> torch.Tensor:
        """One attention problem; on the guarded sparse backend a launch check or kernel error
        reruns it on dense (counted), never failing the request."""
        if not isinstance(backend, GuardedSparseBackend):
            with nvtx.annotate("sas.attend.forward", domain=_NVTX_DOMAIN):
                return backend.forward(q, k, v, backend.build_metadata(block_mask)).out
        if not self._sparse_batch_counted:
            self._guard.begin_sparse_batch()
            self._sparse_batch_counted = True

        def sparse() -> torch.Tensor:
            with nvtx.annotate("sas.attend.forward", domain=_NVTX_DOMAIN):
                return backend.forward(q, k, v, backend.build_metadata(block_mask)).out

        try:
            return self._sparse_or_dense(
                sparse,
                lambda: self._dense.forward(q, k, v, self._dense.build_metadata(block_mask)).out,
            )
        finally:
            self._guard.sampling = False

    def _request_backend(self, spec: AttentionSpec) -> AttentionBackend:
        """The backend for one /v1/attention request: for `auto` the first of the priority list
        that can run it (sparse where the kernel takes the request's shape, even when the model
        itself runs dense), else the configured backend. Sparse goes behind the guard, and once
        the guard has tripped, dense serves instead. A backend that cannot run the request is
        the client's problem (ValueError)."""
        backend = self._request_backends.get(spec)
        if backend is None:
            try:
                selection = select_backend(self._config.attention.backend, spec, self._paths)
            except BackendUnavailableError as exc:
                raise ValueError(str(exc)) from exc
            backend = self._request_backends[spec] = self._guarded(selection.backend)
        if isinstance(backend, GuardedSparseBackend) and self._guard.tripped is not None:
            return self._dense
        return backend

    def warmup(self) -> None:
        """Run one embedding batch and one attention call so first requests pay no set-up, and
        capture the CUDA graphs (the app reports ready only after this returns)."""
        started = time.perf_counter()
        self.embed(self.encode(_WARMUP_TEXTS))
        graphs = self._capture_graphs()
        if self._pattern.type is not PatternType.DOCUMENT:
            bert = self._files.config
            shape = (1, bert.num_attention_heads, 8, bert.head_dim)
            sample = torch.zeros(shape, dtype=self._dtype)
            self.attend([AttentionInput(q=sample, k=sample, v=sample)])
        self._info = dataclasses.replace(
            self._info,
            warmup_seconds=time.perf_counter() - started,
            cuda_graphs=graphs[0],
            cuda_graph_memory_bytes=graphs[1],
        )

    def _capture_graphs(self) -> tuple[int, int]:
        """Capture the embeddings forward per bucket when graphs are on, the device is a GPU
        and the pattern's mask does not depend on scores; (graphs, memory bytes)."""
        settings = self._config.attention.cuda_graphs
        if (
            not settings.enabled
            or self._device.type != "cuda"
            or pattern_needs_scores(self._pattern)
            or self._graphs is not None
        ):
            return self._info.cuda_graphs, self._info.cuda_graph_memory_bytes
        graphs = GraphedForward(
            self._graph_forward,
            self._graph_metadata,
            GraphBuckets.of(settings.batch_sizes, self._max_length),
            device=self._device,
            pad_token_id=self._files.config.pad_token_id,
        )
        report = graphs.capture()
        self._graphs = graphs
        logger.info(
            "captured %d CUDA graphs in %.2f s holding %.1f MiB (%d failed: %s)",
            report.graphs,
            report.seconds,
            report.memory_bytes / 2**20,
            len(report.failed),
            report.failed,
        )
        return report.graphs, report.memory_bytes


def check_attention_input(item: AttentionInput) -> None:
    """Raise ValueError with a clear message when q, k, v (and document ids) cannot be served
    (values are scanned for NaN and infinities unless `item.values_checked`)."""
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
    if item.values_checked:
        return
    for name, tensor in tensors.items():
        if not all_finite(tensor):
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


class ModelTextEncoder:
    """The model directory's tokenizer: special tokens added, cut to the maximum length."""

    def __init__(self, files: ModelFiles, max_length: int) -> None:
        try:
            tokenizer = Tokenizer.from_file(str(files.tokenizer_path))
        except Exception as exc:
            raise EngineStartError(
                f"{files.tokenizer_path}: cannot load tokenizer ({exc})"
            ) from exc
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_length)
        self._tokenizer = tokenizer
        self._lower_case = files.do_lower_case

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        """Token ids per text, flagged when the text was cut."""
        if self._lower_case:
            texts = [text.lower() for text in texts]
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        return [
            EncodedText(ids=tuple(encoding.ids), truncated=bool(encoding.overflowing))
            for encoding in encodings
        ]


def build_text_encoder(config: RuntimeConfig) -> ModelTextEncoder:
    """The configured model's tokenizer alone (no weights, no device): what an HTTP
    front-end process needs."""
    files = _read_files(config)
    return ModelTextEncoder(files, _max_sequence_length(config, files))


def build_engine(config: RuntimeConfig) -> ModelEngine:
    """Load the configured model on the configured device with its attention backend.

    Raises EngineStartError (bad model directory, missing device) or BackendUnavailableError
    (an explicit backend that cannot run the model); both messages are meant for the pod log.
    """
    return ModelEngine(config, device=choose_device(config.server.device))
