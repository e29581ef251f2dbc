"""What the API server does with a CR before the operator sees it, done here without one.

`admit(crd, obj)` refuses unknown fields (kubectl's default strict field validation; without
it the API server prunes them), applies the structural schema's defaults, checks the OpenAPI
bounds (Draft 4 JSON Schema semantics, which OpenAPI v3.0 follows for exclusiveMinimum and the
rest) and evaluates every CEL rule (`x-kubernetes-validations`) at its node with a CEL
interpreter.
It returns the error messages, empty when the object would be admitted.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import cel
import jsonschema

CEL_KEY = "x-kubernetes-validations"


def root_schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def with_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting: missing fields with a default get it, recursively."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for key, child in schema["properties"].items():
            if key not in out and "default" in child:
                out[key] = copy.deepcopy(child["default"])
            if key in out:
                out[key] = with_defaults(child, out[key])
        return out
    if isinstance(value, list) and "items" in schema:
        return [with_defaults(schema["items"], v) for v in value]
    return value


def _rule_nodes(schema: dict[str, Any], value: Any) -> Iterator[tuple[dict[str, Any], Any]]:
    yield schema, value
    if isinstance(value, dict):
        for key, child in schema.get("properties", {}).items():
            if key in value:
                yield from _rule_nodes(child, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for item in value.values():
                yield from _rule_nodes(extra, item)
    if isinstance(value, list) and "items" in schema:
        for item in value:
            yield from _rule_nodes(schema["items"], item)


def cel_failures(schema: dict[str, Any], value: Any) -> list[str]:
    """Messages of the CEL rules that `value` (already defaulted) breaks."""
    failures = []
    for node, node_value in _rule_nodes(schema, value):
        for rule in node.get(CEL_KEY, []):
            if cel.evaluate(rule["rule"], {"self": node_value}) is not True:
                failures.append(rule["message"])
    return failures


def schema_failures(schema: dict[str, Any], value: Any) -> list[str]:
    """OpenAPI bound violations (types, enums, min/max, patterns, lengths, required)."""
    validator = jsonschema.Draft4Validator(schema)
    return [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(value)
    ]


def unknown_fields(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Fields the schema does not declare (metadata is the API server's own)."""
    found: list[str] = []
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            child = schema["properties"].get(key)
            if child is None:
                found.append(f'unknown field "{path}{key}"')
            elif key != "metadata" or path:
                found.extend(unknown_fields(child, item, f"{path}{key}."))
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found.extend(unknown_fields(schema["items"], item, f"{path}[{index}]."))
    return found


def admit(crd: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """Why the API server would refuse `obj` (a whole SAS object), empty when it would not."""
    schema = root_schema(crd)
    defaulted = with_defaults(schema, obj)
    problems = unknown_fields(schema, obj) or schema_failures(schema, defaulted)
    return problems or cel_failures(schema, defaulted)
