"""The generated CRD: current, accepted by Kubernetes' own schema, structural, and equivalent
to the pydantic model (same defaults)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cel
import kubernetes_validate
import pytest
import yaml

from sas_operator.crd import CRD_FILENAME, build_crd, crd_yaml, main
from sas_operator.spec import SparseAttentionServiceSpec
from tests.unit.operator.crd_checks import root_schema, with_defaults

REPO = Path(__file__).resolve().parents[3]
CHECKED_IN = REPO / "crds" / CRD_FILENAME


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, child in schema.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{key}")
    if "items" in schema:
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def test_checked_in_crd_is_what_the_generator_writes() -> None:
    assert CHECKED_IN.read_text() == crd_yaml(), "run `make crds` and commit crds/"


def test_write_option_writes_the_file(tmp_path: Path) -> None:
    assert main(["--write", str(tmp_path)]) == 0
    assert (tmp_path / CRD_FILENAME).read_text() == CHECKED_IN.read_text()


def test_crd_passes_kubernetes_132_strict_validation() -> None:
    kubernetes_validate.validate(yaml.safe_load(CHECKED_IN.read_text()), "1.32", strict=True)


def test_schema_is_structural() -> None:
    for path, node in _nodes(root_schema(build_crd())):
        assert "type" in node, path
        assert not {"$ref", "anyOf", "allOf", "oneOf", "not", "$defs", "title"} & node.keys(), path
        assert not ("properties" in node and "additionalProperties" in node), path
        if node["type"] == "array":
            assert "maxItems" in node, f"{path}: CEL cost needs a bound"
        if node["type"] == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{path}: CEL cost needs a bound"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True, path
            assert "minimum" in node, path


def test_every_spec_and_status_field_is_described() -> None:
    schema = root_schema(build_crd())
    for part in ("spec", "status"):
        for path, node in _nodes(schema["properties"][part], part):
            if path.endswith(("[]", "{}")):
                continue
            assert node.get("description"), f"{path} has no description (kubectl explain)"


def test_every_cel_rule_compiles() -> None:
    rules = [
        rule["rule"]
        for _, node in _nodes(root_schema(build_crd()))
        for rule in node.get("x-kubernetes-validations", [])
    ]
    assert len(rules) >= 15
    for rule in rules:
        cel.compile(rule)


def test_names_subresources_and_columns() -> None:
    crd = build_crd()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "sparseattentionservices.sparseattention.io"
    assert spec["names"]["kind"] == "SparseAttentionService"
    assert spec["names"]["shortNames"] == ["sas"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1"
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert "status" in version["subresources"]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Ready", "Replicas", "Backend", "Pattern", "URL", "Age"]


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"attention": {"pattern": {"type": "window", "window": 512}}},
        {"autoscaling": {}, "security": {"authSecretRef": {"name": "t"}}},
    ],
)
def test_api_server_defaults_equal_pydantic_defaults(spec: dict[str, Any]) -> None:
    schema = root_schema(build_crd())
    defaulted = with_defaults(schema, {"spec": spec})["spec"]
    assert SparseAttentionServiceSpec.model_validate(defaulted) == (
        SparseAttentionServiceSpec.model_validate(spec)
    )
    assert defaulted["attention"]["cudaGraphs"]["batchSizes"] == [1, 2, 4, 8, 16, 32, 64]
