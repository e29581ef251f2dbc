"""Every example in examples/ is admitted by the CRD, valid for the model, and renders."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from sas_operator.crd import build_crd
from sas_operator.render import render
from sas_operator.settings import OperatorSettings
from sas_operator.spec import SparseAttentionServiceSpec
from tests.unit.operator.crd_checks import admit

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples").glob("sas-*.yaml"))


def test_the_examples_are_there() -> None:
    assert {p.name for p in EXAMPLES} >= {"sas-minilm.yaml", "sas-window-autoscaled.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_admitted_and_renders(path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    assert admit(build_crd(), obj) == []
    spec = SparseAttentionServiceSpec.model_validate(obj["spec"])
    for child in render(
        obj["metadata"]["name"], "default", spec, OperatorSettings(), service_monitor_served=False
    ):
        kubernetes_validate.validate(child, "1.32", strict=True)
