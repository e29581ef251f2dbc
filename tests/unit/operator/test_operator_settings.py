"""Operator settings from the environment: defaults, parsing, loud failures."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sas_operator.settings import DEFAULT_GPU_PRODUCTS, OperatorSettings, SettingsError


def test_empty_environment_gives_the_defaults() -> None:
    settings = OperatorSettings.from_env({})
    assert settings == OperatorSettings()
    assert settings.namespaces == ()
    assert settings.peering is None
    assert settings.gpu_products == DEFAULT_GPU_PRODUCTS


def test_chart_variables_are_read() -> None:
    settings = OperatorSettings.from_env(
        {
            "SAS_OPERATOR_WATCH_NAMESPACES": "ml, staging,",
            "SAS_OPERATOR_PEERING": "sas-operator",
            "SAS_OPERATOR_LOG_FORMAT": "plain",
            "SAS_OPERATOR_LOG_LEVEL": "debug",
            "SAS_OPERATOR_DEFAULT_RUNTIME_IMAGE": "registry.local/runtime:1",
            "SAS_OPERATOR_HEALTH_PORT": "8081",
            "SAS_OPERATOR_METRICS_PORT": "9091",
            "SAS_OPERATOR_RESYNC_SECONDS": "30",
            "SAS_OPERATOR_GPU_PRODUCTS": '{"H100": ["NVIDIA-H100-80GB-HBM3"]}',
            "POD_NAMESPACE": "sas-system",
        }
    )
    assert settings.namespaces == ("ml", "staging")
    assert settings.peering == "sas-operator"
    assert (settings.log_format, settings.log_level) == ("plain", "debug")
    assert settings.default_image == "registry.local/runtime:1"
    assert (settings.health_port, settings.metrics_port) == (8081, 9091)
    assert settings.resync_seconds == 30.0
    assert settings.gpu_products == {"H100": ("NVIDIA-H100-80GB-HBM3",)}
    assert settings.operator_namespace == "sas-system"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SAS_OPERATOR_LOG_FORMAT": "xml"}, "SAS_OPERATOR_LOG_FORMAT"),
        ({"SAS_OPERATOR_RESYNC_SECONDS": "often"}, "SAS_OPERATOR_RESYNC_SECONDS"),
        ({"SAS_OPERATOR_RETRY_SECONDS": "-1"}, "SAS_OPERATOR_RETRY_SECONDS"),
        ({"SAS_OPERATOR_GPU_PRODUCTS": "[1]"}, "SAS_OPERATOR_GPU_PRODUCTS"),
        ({"SAS_OPERATOR_GPU_PRODUCTS": "{"}, "SAS_OPERATOR_GPU_PRODUCTS"),
    ],
)
def test_bad_values_fail_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        OperatorSettings.from_env(env)


def test_the_operator_refuses_to_start_on_a_bad_setting() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sas_operator"],
        env={**os.environ, "SAS_OPERATOR_RESYNC_SECONDS": "soon"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "SAS_OPERATOR_RESYNC_SECONDS='soon': expected a number" in result.stderr
