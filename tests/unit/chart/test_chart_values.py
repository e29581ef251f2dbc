"""values.yaml is documented key by key, and values.schema.json refuses bad values clearly."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from .tools import CHART, template, validate_strict, walk_values

VALUES_FILE = CHART / "values.yaml"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())

# Each invalid value set, and the phrase of helm's message that names the problem.
INVALID_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "misspelt top-level key": ({"replicaCount": 2}, "Additional property replicaCount"),
    "misspelt nested key": (
        {"operator": {"logFormt": "json"}},
        "operator: Additional property logFormt",
    ),
    "unknown log format": ({"operator": {"logFormat": "xml"}}, "operator.logFormat"),
    "resync not positive": ({"operator": {"resyncSeconds": 0}}, "operator.resyncSeconds"),
    "gpu products not lists": (
        {"operator": {"gpuProducts": {"H100": "NVIDIA-H100"}}},
        "operator.gpuProducts.H100: Invalid type",
    ),
    "namespace not a DNS label": (
        {"operator": {"watchNamespaces": ["ML_Serving"]}},
        "operator.watchNamespaces.0: Does not match pattern",
    ),
    "duplicate namespaces": (
        {"operator": {"watchNamespaces": ["a", "a"]}},
        "operator.watchNamespaces: array items[0,1] must be unique",
    ),
    "privileged port": ({"operator": {"healthPort": 80}}, "operator.healthPort"),
    "bad pull policy": ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy"),
    "digest not sha256": ({"image": {"digest": "md5:abc"}}, "image.digest"),
    "cpu not a quantity": (
        {"resources": {"requests": {"cpu": "lots"}}},
        "resources.requests.cpu",
    ),
    "memory limit removed": (
        {"resources": {"limits": {"memory": None}}},
        "resources.limits: memory is required",
    ),
    "crds.keep not boolean": ({"crds": {"keep": "yes"}}, "crds.keep: Invalid type"),
    "toleration typo": (
        {"tolerations": [{"key": "a", "efect": "NoSchedule"}]},
        "tolerations.0: Additional property efect",
    ),
    "shed ratio above one": (
        {"monitoring": {"prometheusRule": {"shedRatio": 2}}},
        "monitoring.prometheusRule.shedRatio",
    ),
    "bad alert duration": (
        {"monitoring": {"prometheusRule": {"for": "ten minutes"}}},
        "monitoring.prometheusRule.for: Does not match pattern",
    ),
    "empty pull secret name": (
        {"imagePullSecrets": [{"name": ""}]},
        "imagePullSecrets.0.name",
    ),
    "node selector value not a string": (
        {"nodeSelector": {"gpu": 1}},
        "nodeSelector.gpu: Invalid type",
    ),
}

# Keys whose values are free-form maps (label sets, GPU tables): their keys are data, their
# values typed.
STRING = {"type": "string"}
FREE_FORM_MAPS: dict[str, dict[str, Any]] = {
    "serviceAccount.annotations": STRING,
    "podAnnotations": STRING,
    "podLabels": STRING,
    "nodeSelector": STRING,
    "networkPolicy.metricsNamespaceSelector": STRING,
    "monitoring.serviceMonitor.labels": STRING,
    "monitoring.prometheusRule.labels": STRING,
    "operator.gpuProducts": {
        "type": "array",
        "minItems": 1,
        "items": {"type": "string", "minLength": 1},
    },
}


@pytest.mark.parametrize(("values", "message"), INVALID_VALUES.values(), ids=INVALID_VALUES.keys())
def test_schema_rejects_invalid_values_naming_the_key(values: dict[str, Any], message: str) -> None:
    result = template(values)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


def test_every_key_has_a_comment_above_it() -> None:
    lines = VALUES_FILE.read_text().splitlines()
    key_line = re.compile(r"^\s*[A-Za-z][\w.-]*:")
    undocumented = [
        line.strip()
        for previous, line in itertools.pairwise(lines)
        if key_line.match(line) and not previous.strip().startswith("#")
    ]
    assert undocumented == []
    assert key_line.match(lines[0]) is None


def test_every_leaf_comment_gives_its_default() -> None:
    text = VALUES_FILE.read_text()
    blocks = re.findall(r"((?:^\s*#.*\n)+)^\s*([A-Za-z]\w*): (.+)$", text, re.MULTILINE)
    assert len(blocks) > 30
    missing = [key for comment, key, _ in blocks if "Default" not in comment]
    assert missing == []


def schema_objects(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        yield from schema_objects(SCHEMA["definitions"][name], path)
        return
    if node.get("type") == "object":
        yield path, node
    for key, child in node.get("properties", {}).items():
        yield from schema_objects(child, f"{path}.{key}".lstrip("."))
    for child in node.get("allOf", []):
        yield from schema_objects(child, path)
    if isinstance(node.get("items"), dict):
        yield from schema_objects(node["items"], f"{path}[]")


def test_schema_refuses_unknown_keys_at_every_level() -> None:
    objects = list(schema_objects(SCHEMA))
    assert len(objects) > 15
    for path, node in objects:
        if path in FREE_FORM_MAPS:
            assert node["additionalProperties"] == FREE_FORM_MAPS[path], path
        else:
            assert node.get("additionalProperties") is False, path


def test_schema_and_values_name_the_same_keys() -> None:
    values = yaml.safe_load(VALUES_FILE.read_text())
    value_keys = {
        key
        for key, _ in walk_values(values)
        if not any(key.startswith(f"{m}.") for m in FREE_FORM_MAPS)
    }
    schema_keys = {
        f"{path}.{key}".lstrip(".")
        for path, node in schema_objects(SCHEMA)
        if "[]" not in path
        for key in node.get("properties", {})
    }
    assert value_keys == schema_keys


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"ports": [{"port": "eighty"}]}, "spec.ports.0.port: 'eighty' is not of type 'integer'"),
        ({"ports": [{"port": 80}], "selectr": {}}, "selectr"),
    ],
)
def test_strict_validation_reports_a_broken_manifest(spec: dict[str, Any], problem: str) -> None:
    broken = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": spec}
    (reported,) = validate_strict([broken])
    assert problem in reported
