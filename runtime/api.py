"""The HTTP API's request and response bodies (OpenAI-compatible for embeddings)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from sas_runtime.config import PatternConfig

__all__ = [
    "AttentionRequest",
    "AttentionResponse",
    "Embedding",
    "EmbeddingsRequest",
    "EmbeddingsResponse",
    "ErrorDetail",
    "ErrorResponse",
    "ModelCard",
    "ModelList",
    "Probe",
    "TensorDType",
    "TensorPayload",
    "Usage",
]

TensorDType = Literal["float32", "float16", "bfloat16", "int32", "int64"]


class _ApiModel(BaseModel):
    """Base of every body: unknown fields are an error, so a typo is reported, not ignored."""

    model_config = ConfigDict(extra="forbid")


class EmbeddingsRequest(_ApiModel):
    """POST /v1/embeddings, as in OpenAI's API."""

    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    )
    """One text or a list of texts; none may be empty."""

    model: str
    """The served model's name (see GET /v1/models)."""

    encoding_format: Literal["float", "base64"] = "float"
    """float: a list of numbers; base64: little-endian float32 bytes, base64-encoded."""

    dimensions: Annotated[int, Field(ge=1)] | None = None
    """Accepted only when equal to the model's embedding size (no truncation)."""

    user: str | None = None
    """An end-user id, accepted and ignored."""


class Embedding(_ApiModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(_ApiModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(_ApiModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class TensorPayload(_ApiModel):
    """A tensor in JSON: raw little-endian bytes in row-major order, base64-encoded."""

    dtype: TensorDType
    shape: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=8)]
    data: str


class AttentionRequest(_ApiModel):
    """POST /v1/attention as JSON. The same request as safetensors bytes holds tensors `q`,
    `k`, `v` (and `document_ids`), with the pattern as JSON under the metadata key `pattern`.

    q: [batch, heads, q_len, head_dim]; k, v: [batch, kv_heads, kv_len, head_dim] with heads a
    multiple of kv_heads; one floating dtype. document_ids: [batch, kv_len] int32 (pattern
    'document' only).
    """

    q: TensorPayload
    k: TensorPayload
    v: TensorPayload
    pattern: PatternConfig | None = None
    """The pattern to apply; default: the service's configured pattern."""
    document_ids: TensorPayload | None = None


class AttentionResponse(_ApiModel):
    """The output, shaped and typed like q, with what computed it."""

    output: TensorPayload
    backend: str
    pattern: str


class ModelCard(_ApiModel):
    """GET /v1/models entry: the model and how its attention runs."""

    id: str
    object: Literal["model"] = "model"
    owned_by: str = "sparse-attention-operator"
    embedding_dim: int
    max_sequence_length: int
    device: str
    dtype: str
    backend: str
    pattern: str
    fallback_reason: str | None
    skipped_backends: dict[str, list[str]]


class ModelList(_ApiModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Probe(_ApiModel):
    """GET /healthz and /readyz."""

    status: Literal["alive", "ready", "starting", "draining"]


class ErrorDetail(_ApiModel):
    type: str
    message: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_ApiModel):
    """Every 4xx/5xx body, as in OpenAI's API."""

    error: ErrorDetail
