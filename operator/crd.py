"""The SparseAttentionService CRD, generated from the spec and status models.

Pydantic's JSON schema is turned into a Kubernetes structural schema: references inlined,
every node typed, optional fields left out of `required` (a null is pruned by the API server
before defaulting, so `has()` in CEL and `None` in pydantic mean the same thing), OpenAPI v3.0
bounds, descriptions from the field docstrings, and the models' CEL rules kept.

    python -m sas_operator.crd                 # print the CRD
    python -m sas_operator.crd --write crds/   # write crds/<group>_<plural>.yaml
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from sas_operator.spec import (
    GROUP,
    KIND,
    NAME_MAX_LENGTH,
    NAME_PATTERN,
    PLURAL,
    SHORT_NAME,
    SINGULAR,
    VERSION,
    SparseAttentionServiceSpec,
    SparseAttentionServiceStatus,
)
from sas_runtime.config import CEL_KEY

__all__ = ["CRD_FILENAME", "NAME_RULE", "build_crd", "crd_yaml", "main", "structural_schema"]

CRD_FILENAME = f"{GROUP}_{PLURAL}.yaml"

NAME_RULE = {
    "rule": f"self.metadata.name.size() <= {NAME_MAX_LENGTH}"
    f" && self.metadata.name.matches('{NAME_PATTERN}')",
    "message": f"metadata.name must be a DNS-1035 label of at most {NAME_MAX_LENGTH} characters"
    " (it names the Service and the Deployment)",
}

_DROPPED_KEYS = frozenset({"title", "propertyNames", "additionalProperties", "patternProperties"})


def structural_schema(model: type[Any]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model, as a CRD version embeds it."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    definitions: dict[str, Any] = schema.pop("$defs", {})
    return _convert(schema, definitions)


def _resolve(node: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """Inline a `$ref` and unwrap `anyOf [X, null]`; the node's own keys win (field docs)."""
    node = dict(node)
    if "$ref" in node:
        target = definitions[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**_resolve(target, definitions), **node}
    if "anyOf" in node:
        choices = [c for c in node.pop("anyOf") if c.get("type") != "null"]
        if len(choices) != 1:
            raise ValueError(f"a CRD schema cannot express a union: {choices}")
        node = {**_resolve(choices[0], definitions), **node}
        if node.get("default", ...) is None:
            del node["default"]
    return node


def _convert(raw: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    node = _resolve(raw, definitions)
    out: dict[str, Any] = {}
    if "description" in node:
        out["description"] = " ".join(node["description"].split())
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "type" not in node and "enum" in node:
        node["type"] = "integer" if all(isinstance(v, int) for v in node["enum"]) else "string"
    out["type"] = node["type"]
    for key, value in node.items():
        if key in _DROPPED_KEYS or key in ("description", "type", "default"):
            continue
        if key == "properties":
            out["properties"] = {k: _convert(v, definitions) for k, v in value.items()}
        elif key == "items":
            out["items"] = _convert(value, definitions)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = copy.deepcopy(value)
    if out["type"] == "object" and "properties" not in out:
        out.update(_map_schema(node, definitions))
    if "default" in node:
        out["default"] = _default(node["default"], out)
    return out


def _map_schema(node: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """A string-keyed map: one value schema. Key patterns are left to pydantic (a CEL check on
    map keys has no length bound, so the API server would reject it as too costly)."""
    patterns = node.get("patternProperties", {})
    if len(patterns) > 1:
        raise ValueError("a CRD map has one value schema")
    value = next(iter(patterns.values()), node.get("additionalProperties", {"type": "string"}))
    return {"additionalProperties": _convert(value, definitions)}


def _default(value: Any, schema: dict[str, Any]) -> Any:
    """A default as the API server should store it: nulls pruned, every nested default written
    out. The API server checks CEL rules against a default as written, before nested defaults
    apply, so an object default of `{}` would fail rules that read its fields."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        return {k: _default(v, properties.get(k, {})) for k, v in value.items() if v is not None}
    return copy.deepcopy(value)


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition object."""
    spec_schema = structural_schema(SparseAttentionServiceSpec)
    spec_schema["default"] = _default(
        SparseAttentionServiceSpec().model_dump(mode="json", by_alias=True), spec_schema
    )
    status_schema = structural_schema(SparseAttentionServiceStatus)
    root = {
        "type": "object",
        "description": spec_schema["description"],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version of this object."},
            "kind": {"type": "string", "description": "Kind of this object."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        CEL_KEY: [NAME_RULE],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": [SHORT_NAME],
                "categories": ["all"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": _printer_columns(),
                }
            ],
        },
    }


def _printer_columns() -> list[dict[str, Any]]:
    return [
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        },
        {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
        {"name": "Backend", "type": "string", "jsonPath": ".status.backend"},
        {"name": "Pattern", "type": "string", "jsonPath": ".spec.attention.pattern.type"},
        {"name": "URL", "type": "string", "jsonPath": ".status.url"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def crd_yaml() -> str:
    """The CRD as the YAML document checked in under crds/."""
    header = "# Generated by `python -m sas_operator.crd` (make crds) from sas_operator.spec: do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sas_operator.crd", description=__doc__)
    parser.add_argument("--write", type=Path, metavar="DIR", help="write the CRD file into DIR")
    args = parser.parse_args(argv)
    text = crd_yaml()
    if args.write is None:
        sys.stdout.write(text)
    else:
        args.write.mkdir(parents=True, exist_ok=True)
        (args.write / CRD_FILENAME).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
