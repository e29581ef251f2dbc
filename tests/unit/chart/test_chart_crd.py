"""The chart's CRD is the generated file in crds/, kept on uninstall unless asked otherwise."""

from __future__ import annotations

from pathlib import Path

import yaml

from .tools import CHART, REPO, Manifest, find, render

GENERATED = sorted((REPO / "crds").glob("*.yaml"))
KEEP = "helm.sh/resource-policy"


def service_crds(manifests: list[Manifest]) -> list[Manifest]:
    return [
        m for m in find(manifests, "CustomResourceDefinition") if m["spec"]["group"] != "kopf.dev"
    ]


def test_chart_reads_the_generated_crd_directory() -> None:
    assert GENERATED, "crds/ is empty: run `make crds`"
    link = CHART / "files" / "crds"
    assert link.is_symlink()
    assert link.resolve() == (REPO / "crds").resolve()


def test_rendered_crd_is_the_generated_file_plus_release_metadata() -> None:
    rendered = {crd["metadata"]["name"]: crd for crd in service_crds(render())}
    generated = [yaml.safe_load(path.read_text()) for path in GENERATED]
    assert set(rendered) == {crd["metadata"]["name"] for crd in generated}
    for crd in generated:
        ours = rendered[crd["metadata"]["name"]]
        metadata = ours.pop("metadata")
        expected_metadata = crd.pop("metadata")
        assert ours == crd
        assert metadata["name"] == expected_metadata["name"]
        assert metadata["labels"].items() >= expected_metadata.get("labels", {}).items()
        assert metadata["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_crd_kept_on_uninstall_by_default() -> None:
    (crd,) = service_crds(render())
    assert crd["metadata"]["annotations"][KEEP] == "keep"
    (crd,) = service_crds(render({"crds": {"keep": False}}))
    assert KEEP not in crd["metadata"].get("annotations", {})


def test_crd_left_out_when_managed_elsewhere() -> None:
    assert service_crds(render({"crds": {"enabled": False}})) == []


def test_values_warn_that_deleting_the_crd_deletes_every_service() -> None:
    text = (CHART / "values.yaml").read_text()
    crds_block = text[text.index("crds:") : text.index("image:")]
    assert "WARNING" in crds_block
    assert "deletes every SparseAttentionService" in crds_block


def test_peering_crds_are_in_the_chart_crds_directory() -> None:
    peering = yaml.safe_load_all(Path(CHART / "crds" / "kopf-peerings.yaml").read_text())
    names = {crd["metadata"]["name"] for crd in peering}
    assert names == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
