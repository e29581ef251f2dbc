"""Run the chart's tools for tests: `helm template`/`helm lint`, checkov, and strict validation.

Tools come from the cache that `make test` fills (helm from hack/cluster, checkov and hadolint from
`make lint-tools`); a test that needs a missing tool fails and says how to build it.
"""

from __future__ import annotations

import copy
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from hack.cluster import tools as cluster_tools

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "sparse-attention-operator"
KUBERNETES_VERSION = "1.32"
RELEASE = "sas"
NAMESPACE = "sas-system"

# The prometheus-operator release whose CRDs (ServiceMonitor, PrometheusRule) define the
# monitoring objects the chart renders.
PROMETHEUS_OPERATOR = ("github.com/prometheus-operator/prometheus-operator", "v0.80.1")

Manifest = dict[str, Any]


def helm() -> Path:
    """The helm binary: `$SAS_HELM`, else the one hack/cluster builds into the cache."""
    override = os.environ.get("SAS_HELM")
    path = Path(override) if override else cluster_tools.HELM.path
    if not path.exists():
        pytest.fail(f"helm is not built ({path}): `make test` builds it, or set SAS_HELM")
    return path


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    """Run helm on the chart; helm's notice about the files/crds link is dropped from stderr."""
    result = subprocess.run(
        [str(helm()), *args], capture_output=True, text=True, check=False, cwd=REPO
    )
    stderr = "\n".join(
        line for line in result.stderr.splitlines() if "found symbolic link in path" not in line
    )
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout, stderr)


def template(values: Mapping[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart for Kubernetes 1.32, CRDs of crds/ included. Values go
    through a file so that their types survive exactly."""
    with tempfile.TemporaryDirectory(prefix="sas-chart-") as folder:
        values_file = Path(folder) / "values.yaml"
        values_file.write_text(yaml.safe_dump(dict(values or {})))
        return run_helm(
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            KUBERNETES_VERSION,
            "--include-crds",
            "--values",
            str(values_file),
        )


def render(values: Mapping[str, Any] | None = None) -> list[Manifest]:
    """The chart's manifests for these values; the test fails with helm's message on an error."""
    result = template(values)
    if result.returncode != 0:
        pytest.fail(f"helm template failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    """Manifests of a kind (and name)."""
    return [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]


def validate_strict(manifests: list[Manifest], extra_crds: Sequence[Manifest] = ()) -> list[str]:
    """Problems of each manifest under Kubernetes 1.32's schemas, strict (unknown fields are
    errors); custom resources are checked against the CRDs rendered beside them or given."""
    crd_schemas = _crd_schemas([*manifests, *extra_crds])
    problems: list[str] = []
    for manifest in manifests:
        where = f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"
        group_version_kind = (manifest.get("apiVersion"), manifest.get("kind"))
        if group_version_kind in crd_schemas:
            validator = jsonschema.Draft7Validator(crd_schemas[group_version_kind])
            problems.extend(
                f"{where}: {'.'.join(map(str, error.absolute_path))}: {error.message}"
                for error in validator.iter_errors(manifest)
            )
            continue
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{where}: {'.'.join(map(str, error.path))}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{where}: no schema for {group_version_kind}")
    return problems


def _crd_schemas(manifests: Sequence[Manifest]) -> dict[tuple[str, str], dict[str, Any]]:
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for crd in manifests:
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        for version in spec["versions"]:
            schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            schema.setdefault("properties", {}).update(
                apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"}
            )
            schemas[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = schema
    return schemas


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI v3 structural schema as JSON schema that refuses unknown fields."""
    open_ended = "additionalProperties" in schema or schema.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if "properties" in schema and not open_ended:
        schema["additionalProperties"] = False
    for key in ("properties", "patternProperties"):
        for child in schema.get(key, {}).values():
            _strict(child)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        for child in schema.get(key, []):
            _strict(child)
    return schema


@cache
def prometheus_operator_crds() -> tuple[Manifest, ...]:
    """The ServiceMonitor and PrometheusRule CRDs from the prometheus-operator Go module."""
    module, version = PROMETHEUS_OPERATOR
    folder = cluster_tools.download_module(module, version) / "example" / "prometheus-operator-crd"
    return tuple(
        yaml.safe_load((folder / f"monitoring.coreos.com_{plural}.yaml").read_text())
        for plural in ("servicemonitors", "prometheusrules")
    )


def walk_values(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every (dotted key, value) of a values tree, maps descended, leaves included."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        yield path, value
        if isinstance(value, Mapping) and value:
            yield from walk_values(value, f"{path}.")
