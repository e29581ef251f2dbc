"""`python -m sas_runtime serve`: a bad config stops start-up with a message naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sas_runtime.__main__ import CONFIG_ENV, load_engine_factory, main
from sas_runtime.config import AttentionBackendName, DeviceName, ModelSource, load_config
from tests.fake_engine import build_fake_engine
from tests.runtime_process import REPO_ROOT

FAKE = "tests.fake_engine:build_fake_engine"


def test_the_example_config_serves_minilm_dense_on_the_cpu() -> None:
    config = load_config(REPO_ROOT / "examples" / "runtime.yaml")
    assert config.model.source is ModelSource.BUILTIN_MINILM
    assert config.attention.backend is AttentionBackendName.DENSE
    assert config.server.device is DeviceName.CPU


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("batching: {maxBatchSize: 0}", "batching.maxBatchSize"),
        ("server: {port: 80}", "server.port"),
        ("attention: {pattern: {type: window}}", "window"),
        ("rateLimit: {requestsPerSecond: 10, burst: 1}", "burst"),
        ("serverr: {}", "serverr"),
        ("- a list", "mapping"),
        ("model: [unclosed", "not valid YAML"),
        (b"server: {port: 8080}\n# \xff\xfe\n", "is not UTF-8 text (byte 23)"),
    ],
)
def test_a_bad_config_stops_start_up_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | bytes, named: str
) -> None:
    config = tmp_path / "runtime.yaml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["serve", "--config", str(config), "--engine", FAKE]) == 2
    assert named in capsys.readouterr().err


def test_a_missing_token_file_stops_start_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "runtime.yaml"
    config.write_text(f"server: {{authTokenFile: {tmp_path}/absent}}")
    assert main(["serve", "--config", str(config), "--engine", FAKE]) == 2
    assert "server.authTokenFile" in capsys.readouterr().err


def test_the_config_path_may_come_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "from-env.yaml"
    config.write_text("batching: {maxQueueDepth: 1, maxBatchSize: 2}")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    assert main(["serve", "--engine", FAKE]) == 2
    err = capsys.readouterr().err
    assert "from-env.yaml" in err
    assert "maxQueueDepth must be at least maxBatchSize" in err


def test_no_config_at_all_says_how_to_give_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert main(["serve"]) == 2
    assert CONFIG_ENV in capsys.readouterr().err


def test_an_engine_that_cannot_be_built_stops_start_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "runtime.yaml"
    config.write_text("{}")
    assert main(["serve", "--config", str(config), "--engine", "tests.fake_engine:nothing"]) == 1
    assert "cannot build the engine" in capsys.readouterr().err


def test_engine_factories_are_module_colon_function() -> None:
    assert load_engine_factory(FAKE) is build_fake_engine
    with pytest.raises(ValueError, match="module:function"):
        load_engine_factory("tests.fake_engine")


def test_the_real_command_refuses_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "runtime.yaml"
    config.write_text("server: {maxInputs: -1}")
    done = subprocess.run(
        [sys.executable, "-m", "sas_runtime", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "server.maxInputs" in done.stderr
