"""NOTES.txt's first SparseAttentionService is one the API server and the operator accept."""

from __future__ import annotations

import re
import textwrap
from typing import Any

import yaml

from sas_operator.spec import SparseAttentionServiceSpec

from .tools import CHART, REPO, validate_strict

NOTES = (CHART / "templates" / "NOTES.txt").read_text()


def first_service() -> dict[str, Any]:
    match = re.search(r"cat <<YAML \| kubectl apply -f -\n(.*?)\n\s*YAML\n", NOTES, re.DOTALL)
    assert match is not None
    text = re.sub(r"\{\{.*?\}\}", "ml-serving", textwrap.dedent(match.group(1)))
    manifest: dict[str, Any] = yaml.safe_load(text)
    return manifest


def test_notes_example_passes_the_crd_schema() -> None:
    crds = [yaml.safe_load(path.read_text()) for path in (REPO / "crds").glob("*.yaml")]
    manifest = first_service()
    assert manifest["kind"] == "SparseAttentionService"
    assert validate_strict([manifest], crds) == []
    misspelt = {**manifest, "spec": {**manifest["spec"], "replica": 1}}
    assert any("replica" in problem for problem in validate_strict([misspelt], crds))


def test_notes_example_is_a_valid_spec() -> None:
    spec = SparseAttentionServiceSpec.model_validate(first_service()["spec"])
    assert spec.replicas == 1
