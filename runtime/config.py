"""The runtime's configuration: the part of a SparseAttentionService spec that a pod needs.

One model, two consumers. The operator embeds these classes in the CR spec (the CRD schema is
generated from them, CEL rules included) and writes `RuntimeConfig` as JSON into the pod's
ConfigMap; the runtime reads the file back with the same class. Importing this module never
imports torch, so the operator can use it.

Cross-field rules are written twice on purpose, once as CEL (`x-kubernetes-validations`, run by
the API server) and once as a pydantic validator (run by the runtime and the operator); tests
check that the two agree.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

__all__ = [
    "CEL_KEY",
    "AttentionBackendName",
    "AttentionConfig",
    "AttentionDType",
    "BatchingConfig",
    "ConfigError",
    "CudaGraphsConfig",
    "DeviceName",
    "LongInputPolicy",
    "ModelConfig",
    "ModelSource",
    "PatternConfig",
    "PatternType",
    "RateLimitConfig",
    "RuntimeConfig",
    "ServerConfig",
    "SpecModel",
    "ValidationConfig",
    "cel_list",
    "cel_rules",
    "load_config",
    "validation_problems",
]

CEL_KEY = "x-kubernetes-validations"


def cel_rules(*rules: tuple[str, str]) -> dict[str, Any]:
    """JSON-schema extra holding CEL rules as (rule, message) pairs for the generated CRD."""
    return {CEL_KEY: [{"rule": rule, "message": message} for rule, message in rules]}


def cel_list(items: Iterable[str]) -> str:
    """A CEL list literal of these strings."""
    return "[" + ", ".join(f"'{item}'" for item in items) + "]"


class SpecModel(BaseModel):
    """Base of every spec section: camelCase on the wire, unknown keys refused, immutable.

    Field docstrings become the CRD's descriptions (`kubectl explain`).
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        alias_generator=to_camel,
        use_attribute_docstrings=True,
    )


class ModelSource(enum.StrEnum):
    BUILTIN_MINILM = "builtin-minilm"
    PATH = "path"


class LongInputPolicy(enum.StrEnum):
    TRUNCATE = "truncate"
    REJECT = "reject"


class ModelConfig(SpecModel):
    """Which model the pod serves. Models load from a Hugging Face-format directory."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "self.source != 'path' || has(self.path)",
                "model.path is required when source is 'path'",
            ),
            (
                "self.source != 'builtin-minilm' || !has(self.path)",
                "model.path must be empty when source is 'builtin-minilm' (it ships inside the image)",
            ),
        )
    )

    source: ModelSource = ModelSource.BUILTIN_MINILM
    """Where the weights come from: 'builtin-minilm' (all-MiniLM-L6-v2, shipped in the runtime
    image) or 'path' (a Hugging Face-format directory: config.json, model.safetensors,
    tokenizer.json)."""

    path: Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^/")] | None = None
    """Absolute path of the model directory inside the pod (source 'path' only), e.g.
    /models/bge-small."""

    name: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    """Model name reported by /v1/models and expected in requests; default: the directory's name."""

    max_sequence_length: Annotated[int, Field(ge=8, le=131072)] | None = None
    """Longest input in tokens, special tokens included; default: the model's own limit
    (256 for all-MiniLM-L6-v2)."""

    long_inputs: LongInputPolicy = LongInputPolicy.TRUNCATE
    """What to do with a text longer than maxSequenceLength: 'truncate' it, or 'reject' the
    request with 413."""

    @model_validator(mode="after")
    def _path_matches_source(self) -> ModelConfig:
        if self.source is ModelSource.PATH and self.path is None:
            raise ValueError("model.path is required when source is 'path'")
        if self.source is ModelSource.BUILTIN_MINILM and self.path is not None:
            raise ValueError(
                "model.path must be empty when source is 'builtin-minilm' (it ships inside the image)"
            )
        return self


class AttentionBackendName(enum.StrEnum):
    AUTO = "auto"
    SPARSE = "sparse"
    DENSE = "dense"
    REFERENCE = "reference"


class PatternType(enum.StrEnum):
    DENSE = "dense"
    CAUSAL = "causal"
    WINDOW = "window"
    GLOBAL_WINDOW = "global-window"
    DILATED = "dilated"
    DOCUMENT = "document"
    TOPK = "topk"


_PATTERN_FIELDS: dict[PatternType, tuple[str, ...]] = {
    PatternType.WINDOW: ("window",),
    PatternType.GLOBAL_WINDOW: ("window", "globalTokens"),
    PatternType.DILATED: ("dilation",),
    PatternType.TOPK: ("topK",),
}


_PATTERN_FIELD_TYPES: dict[str, tuple[PatternType, ...]] = {
    field: tuple(kind for kind, fields in _PATTERN_FIELDS.items() if field in fields)
    for field in dict.fromkeys(f for fields in _PATTERN_FIELDS.values() for f in fields)
}
"""The pattern types that use each field; a field set for another type is refused, not ignored."""


def _unused_field_message(field: str) -> str:
    kinds = " or ".join(kind.value for kind in _PATTERN_FIELD_TYPES[field])
    return f"pattern.{field} is used only by type {kinds}: remove it, or set that type"


def _pattern_cel() -> dict[str, Any]:
    rules = [
        (
            f"self.type != '{kind.value}' || ({' && '.join(f'has(self.{f})' for f in fields)})",
            f"pattern type '{kind.value}' requires {', '.join(fields)}",
        )
        for kind, fields in _PATTERN_FIELDS.items()
    ]
    rules.extend(
        (
            f"!has(self.{field}) || self.type in {cel_list(k.value for k in kinds)}",
            _unused_field_message(field),
        )
        for field, kinds in _PATTERN_FIELD_TYPES.items()
    )
    rules.append(
        (
            "!has(self.globalTokens) || self.globalTokens % self.blockSize == 0",
            "pattern.globalTokens must be a multiple of blockSize",
        )
    )
    return cel_rules(*rules)


class PatternConfig(SpecModel):
    """Which key positions each query may attend to. Every pattern compiles to a block mask
    (FlexAttention's BlockMask layout) that the sparse kernel walks; the dense path applies the
    same mask element by element."""

    model_config = ConfigDict(json_schema_extra=_pattern_cel())

    type: PatternType = PatternType.DENSE
    """dense (every key), causal (keys at or before the query), window (keys within `window`
    tokens on either side), global-window (window plus `globalTokens` leading tokens that see and
    are seen by all), dilated (every `dilation`-th key block), document (no attention across
    document boundaries, given per request), topk (the `topK` key blocks with the highest pooled
    scores per query block)."""

    block_size: Literal[64, 128] = 128
    """Tokens per mask block on both axes: 128 matches the kernel's query tile; 64 gives finer
    masks for short sequences."""

    window: Annotated[int, Field(ge=1, le=1_048_576)] | None = None
    """Window radius in tokens (window and global-window), e.g. 1024."""

    global_tokens: Annotated[int, Field(ge=1, le=1_048_576)] | None = None
    """Leading tokens that attend to, and are attended by, every position (global-window), e.g. 128."""

    dilation: Annotated[int, Field(ge=2, le=1024)] | None = None
    """Visit every dilation-th key block, plus the diagonal block (dilated), e.g. 2."""

    top_k: Annotated[int, Field(ge=1, le=4096)] | None = None
    """Key blocks kept per query block, chosen by mean-pooled q·k scores (topk), e.g. 8."""

    @model_validator(mode="after")
    def _fields_for_type(self) -> PatternConfig:
        wanted = _PATTERN_FIELDS.get(self.type, ())
        missing = [f for f in wanted if getattr(self, _snake(f)) is None]
        if missing:
            raise ValueError(f"pattern type '{self.type.value}' requires {', '.join(wanted)}")
        for field, kinds in _PATTERN_FIELD_TYPES.items():
            if getattr(self, _snake(field)) is not None and self.type not in kinds:
                raise ValueError(_unused_field_message(field))
        if self.global_tokens is not None and self.global_tokens % self.block_size:
            raise ValueError("pattern.globalTokens must be a multiple of blockSize")
        return self


def _snake(camel: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)


class AttentionDType(enum.StrEnum):
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"


class CudaGraphsConfig(SpecModel):
    """CUDA graph capture of the forward pass, one graph per batch-size bucket."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "self.batchSizes.all(i, self.batchSizes.exists_one(j, j == i))",
                "cudaGraphs.batchSizes must not repeat a size",
            )
        )
    )

    enabled: bool = True
    """Capture graphs at warm-up (GPU only; ignored on the CPU)."""

    batch_sizes: Annotated[
        list[Annotated[int, Field(ge=1, le=4096)]], Field(min_length=1, max_length=32)
    ] = [
        1,
        2,
        4,
        8,
        16,
        32,
        64,
    ]
    """Batch sizes to capture; a batch is padded up to the next size, larger ones run eagerly."""

    @model_validator(mode="after")
    def _unique_sizes(self) -> CudaGraphsConfig:
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            raise ValueError("cudaGraphs.batchSizes must not repeat a size")
        return self


class ValidationConfig(SpecModel):
    """The guard that keeps sparse attention honest: a sampled dense recomputation."""

    max_rmse: Annotated[float, Field(gt=0, le=1.0)] = 1.0e-3
    """Largest root-mean-square error of a sparse result against the dense reference before the
    service switches to dense."""

    sample_every: Annotated[int, Field(ge=1, le=1_000_000)] = 100
    """Check one sample every this many batches."""


class AttentionConfig(SpecModel):
    """How attention runs inside the model and for /v1/attention requests."""

    backend: AttentionBackendName = AttentionBackendName.AUTO
    """auto (sparse when the kernel can take the configuration, else dense, with the reason in
    status), sparse or dense (explicit: the pod refuses to start rather than fall back), or
    reference (float64 math, for tests)."""

    pattern: PatternConfig = PatternConfig()
    """The attention pattern."""

    dtype: AttentionDType = AttentionDType.BFLOAT16
    """Compute dtype on the GPU; the CPU always computes in float32."""

    cuda_graphs: CudaGraphsConfig = CudaGraphsConfig()
    """CUDA graph capture."""

    validation: ValidationConfig = ValidationConfig()
    """Sparse-versus-dense guard."""


class BatchingConfig(SpecModel):
    """The continuous batcher: how long to gather, how much to take, how much to queue."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "self.maxQueueDepth >= self.maxBatchSize",
                "batching.maxQueueDepth must be at least maxBatchSize",
            ),
        )
    )

    window_microseconds: Annotated[int, Field(ge=0, le=1_000_000)] = 150
    """How long the batcher waits for more requests after the first one, in microseconds (a
    request that is the only arrival since the previous batch started runs at once)."""

    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 64
    """Most requests (texts) in one forward pass."""

    max_queue_depth: Annotated[int, Field(ge=1, le=1_000_000)] = 1024
    """Most requests waiting; past it new requests get 429 with Retry-After."""

    max_tokens: Annotated[int, Field(ge=1, le=16_777_216)] = 32768
    """Most tokens (padded) in one forward pass."""

    request_timeout_milliseconds: Annotated[int, Field(ge=1, le=600_000)] = 30_000
    """Default deadline of a request; a client may ask for less with the X-Request-Timeout-Ms header."""

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> BatchingConfig:
        if self.max_queue_depth < self.max_batch_size:
            raise ValueError("batching.maxQueueDepth must be at least maxBatchSize")
        return self


class RateLimitConfig(SpecModel):
    """Token bucket in front of the queue, per pod."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "self.burst >= self.requestsPerSecond",
                "rateLimit.burst must be at least requestsPerSecond",
            ),
        )
    )

    requests_per_second: Annotated[float, Field(gt=0, le=1_000_000)] = 200
    """Sustained requests per second each pod admits."""

    burst: Annotated[int, Field(ge=1, le=10_000_000)] = 400
    """Requests admitted at once after an idle spell (the bucket's size)."""

    @model_validator(mode="after")
    def _burst_covers_rate(self) -> RateLimitConfig:
        if self.burst < self.requests_per_second:
            raise ValueError("rateLimit.burst must be at least requestsPerSecond")
        return self


class DeviceName(enum.StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class ServerConfig(SpecModel):
    """The HTTP server's limits and shutdown behaviour."""

    port: Annotated[int, Field(ge=1024, le=65535)] = 8000
    """Port the pod serves HTTP (API and /metrics) on."""

    device: DeviceName = DeviceName.AUTO
    """auto (the GPU when there is one), cpu or cuda."""

    max_body_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = 16 << 20
    """Largest request body; larger ones get 413."""

    max_inputs: Annotated[int, Field(ge=1, le=65536)] = 256
    """Most texts in one embeddings request."""

    max_attention_elements: Annotated[int, Field(ge=1, le=1 << 31)] = 1 << 24
    """Most elements in each of q, k and v of one attention request."""

    frontends: Annotated[int, Field(ge=1, le=64)] = 1
    """HTTP front-end processes. 1: HTTP, batching and the model share one process. More: each
    front-end parses, validates and tokenizes requests and hands them to one engine process,
    which batches across all of them; for GPU pods, where one Python process cannot keep the
    GPU busy (give the pod about one CPU per front-end, plus one for the engine)."""

    drain_seconds: Annotated[int, Field(ge=0, le=3600)] = 30
    """On SIGTERM: how long in-flight work may take to finish before the process exits."""

    auth_token_file: Annotated[str, Field(min_length=1, pattern=r"^/")] | None = None
    """File holding the bearer token that requests must present; unset: no authentication."""


class RuntimeConfig(SpecModel):
    """Everything the runtime reads at start-up."""

    model: ModelConfig = ModelConfig()
    attention: AttentionConfig = AttentionConfig()
    batching: BatchingConfig = BatchingConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    server: ServerConfig = ServerConfig()

    def to_json(self) -> str:
        """The ConfigMap payload: camelCase keys, defaults spelled out, stable key order."""
        return json.dumps(self.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True)


class ConfigError(Exception):
    """A configuration file the runtime cannot start with; the message names field and problem."""


def load_config(path: str | Path) -> RuntimeConfig:
    """Read a YAML or JSON config file; raise ConfigError naming each bad field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start}): {exc.reason}"
        ) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML/JSON: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, not {type(data).__name__}")
    try:
        return RuntimeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"config file {path} is invalid: {validation_problems(exc)}") from exc


def validation_problems(exc: ValidationError) -> str:
    """Every error of `exc` as 'dotted.location: message', joined by '; '."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
        for err in exc.errors()
    )
