"""bench/kernel_ab.sh without a GPU: stand-ins for python3, compute-sanitizer and nvidia-smi
record what the script asks of them, so a device call is not the first run of its logic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.bench.device_stubs import stub_environment

REPO = Path(__file__).resolve().parents[3]

# Builds make the library file; the build, GPU tests or benchmark of a side whose tree holds
# FAIL_BUILD, FAIL_TESTS or FAIL_BENCH fail; the benchmark writes one row; the summary runs for
# real.
PYTHON3 = f"""#!{sys.executable}
import json, os, pathlib, subprocess, sys
args = sys.argv[1:]
log = pathlib.Path(os.environ["STUB_LOG"])
with log.open("a") as f:
    f.write(" ".join(args) + " | " + os.environ.get("PYTHONPATH", "").split(":")[0]
            + " | " + os.environ.get("TORCHINDUCTOR_CACHE_DIR", "")
            + " | " + os.environ.get("SAS_KERNEL_DTYPES", "") + "\\n")
site = os.environ.get("PYTHONPATH", "").split(":")[0]
tree = (pathlib.Path(site) / "sas_runtime").resolve().parent
if args[:2] == ["-m", "pip"]:
    sys.exit(0)
if args[:2] == ["-m", "sas_runtime.kernels.build"]:
    if (tree / "FAIL_BUILD").exists():
        sys.exit("error: stub build failure")
    out = pathlib.Path(args[args.index("--out") + 1])
    out.mkdir(parents=True, exist_ok=True)
    namespace = args[args.index("--op-namespace") + 1] if "--op-namespace" in args else "sas"
    (out / ("sas_kernels.so" if namespace == "sas" else f"sas_kernels_{{namespace}}.so")).touch()
elif args[:2] == ["-m", "pytest"]:
    failing = pathlib.Path("FAIL_TESTS").exists()
    print("tests/gpu/test_x.py::test_x FAILED" if failing else "tests/gpu/test_x.py::test_x PASSED")
    print("1 failed" if failing else "37 passed")
elif args[:2] == ["-m", "bench.kernel"]:
    if (tree / "FAIL_BENCH").exists():
        sys.exit("Traceback: stub bench failure")
    out = pathlib.Path(args[args.index("--out") + 1])
    row = {{"head_dim": int(args[args.index("--head-dims") + 1]), "seq_len": 4096,
           "mask": "causal", "ours_ms": 1.0, "cudnn_dense_ms": 2.0,
           "ours_graph_ms": None, "cudnn_dense_graph_ms": None}}
    out.write_text(json.dumps({{"environment": {{}}, "rows": [row]}}))
    print("S=4096 stub")
elif args[:2] == ["-m", "bench.kernel_variants"]:
    out = pathlib.Path(args[args.index("--out") + 1])
    out.write_text(json.dumps({{"rows": [], "variants": args[args.index("--variant") + 1]}}))
    print("S=4096 stub side by side")
    print("geometric mean over base: sas_v1 0.990")
elif args[:2] == ["-m", "bench.kernel_tile_cost"]:
    out = pathlib.Path(args[args.index("--out") + 1])
    out.write_text(json.dumps({{"rows": [], "fits": {{}}}}))
    print("sas_v1/random-plain fit: 2.80 us per tile + 1.855 us per block (31.0 waves)")
elif args[:2] == ["-m", "bench.kernel_ab_summary"]:
    sys.exit(subprocess.call([{sys.executable!r}, *args]))
else:
    sys.exit(f"unexpected python3 {{args}}")
"""

SANITIZER = """#!/bin/sh
echo "$PYTHONPATH" | cut -d: -f1 >>"$STUB_LOG.sanitized"
echo "========= ERROR SUMMARY: 0 errors"
"""


def _patch(tmp_path: Path, name: str, new_file: str) -> Path:
    """A patch that adds one file under tests/ (so it applies to any HEAD)."""
    patch = tmp_path / f"{name}.patch"
    patch.write_text(f"--- a/{new_file}\n+++ b/{new_file}\n@@ -0,0 +1 @@\n+marker\n")
    return patch


@pytest.fixture
def stubs(tmp_path: Path) -> dict[str, str]:
    return stub_environment(tmp_path, {"python3": PYTHON3, "compute-sanitizer": SANITIZER})


def _ab(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "bench/kernel_ab.sh", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_each_variant_is_tested_a_failing_one_dropped_the_rest_alternated(
    tmp_path: Path, stubs: dict[str, str]
) -> None:
    good = _patch(tmp_path, "kernel-good", "tests/GOOD_MARKER")
    bad = _patch(tmp_path, "kernel-bad", "FAIL_TESTS")
    result = _ab({**stubs, "SANITIZE": "base,kernel-good"}, f"{good},{bad}", "causal", "4096")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kernel-bad: tests failed or hung, not benchmarked" in result.stdout
    out = Path(stubs["OUT"])
    benched = sorted(p.name for p in out.glob("*-pass*.json"))
    assert benched == sorted(
        f"{side}-d{d}-pass{n}.json"
        for side in ("base", "kernel-good")
        for d in (128, 64)
        for n in (1, 2)
    )
    # Every side's benchmark imported its own tree: the first PYTHONPATH entry is its site.
    calls = Path(stubs["STUB_LOG"]).read_text().splitlines()
    bench_sites = {line.split(" | ")[1] for line in calls if line.startswith("-m bench.kernel ")}
    assert {Path(site).name for site in bench_sites} == {"site-base", "site-kernel-good"}
    # Each side's GPU tests compile into a cache of their own (Inductor's key leaves out the op's
    # schema, so a shared cache replays one side's compiled calls against another's op).
    test_caches = [line.split(" | ")[2] for line in calls if line.startswith("-m pytest ")]
    assert len(test_caches) == 2
    assert all(test_caches)
    assert len(set(test_caches)) == 2
    sanitized = Path(stubs["STUB_LOG"] + ".sanitized").read_text().split()
    assert [Path(site).name for site in sanitized] == ["site-base"] * 3 + ["site-kernel-good"] * 3
    summary = (out / "summary.txt").read_text()
    assert "kernel-good over base" in summary
    assert "kernel-bad" not in summary
    assert json.loads((out / "base-d128-pass1.json").read_text())["rows"]


def test_a_patch_that_does_not_apply_stops_before_any_build(
    tmp_path: Path, stubs: dict[str, str]
) -> None:
    broken = tmp_path / "kernel-broken.patch"
    broken.write_text("--- a/runtime/nope.py\n+++ b/runtime/nope.py\n@@ -1 +1 @@\n-x\n+y\n")
    result = _ab(stubs, str(broken), "causal", "4096")
    assert result.returncode != 0
    calls = Path(stubs["STUB_LOG"])
    assert not calls.exists() or "sas_runtime.kernels.build" not in calls.read_text()


def test_variants_that_do_not_build_or_whose_bench_fails_are_left_out(
    tmp_path: Path, stubs: dict[str, str]
) -> None:
    good = _patch(tmp_path, "kernel-good", "tests/GOOD_MARKER")
    unbuilt = _patch(tmp_path, "kernel-unbuilt", "FAIL_BUILD")
    crashing = _patch(tmp_path, "kernel-crashing", "FAIL_BENCH")
    result = _ab(stubs, f"{good},{unbuilt},{crashing}", "causal", "4096")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kernel-unbuilt: build failed" in result.stdout
    assert "stub build failure" in result.stdout  # the end of its log
    assert "kernel-crashing: bench failed or hung, left out from here on" in result.stdout
    out = Path(stubs["OUT"])
    assert (out / "kernel-unbuilt-build.log").exists()
    assert not list(out.glob("kernel-unbuilt-*.json"))
    assert not list(out.glob("kernel-crashing-*.json"))
    assert len(list(out.glob("kernel-good-*.json"))) == 4
    summary = (out / "summary.txt").read_text()
    assert "kernel-good over base" in summary
    assert "kernel-crashing" not in summary


def test_head_dims_pick_which_benches_run(tmp_path: Path, stubs: dict[str, str]) -> None:
    good = _patch(tmp_path, "kernel-good", "tests/GOOD_MARKER")
    result = _ab(stubs, str(good), "causal", "4096", "128")
    assert result.returncode == 0, result.stdout + result.stderr
    benched = sorted(p.name for p in Path(stubs["OUT"]).glob("*-pass*.json"))
    assert benched == sorted(
        f"{side}-d128-pass{n}.json" for side in ("base", "kernel-good") for n in (1, 2)
    )


def test_side_by_side_builds_each_kept_variant_under_its_own_namespace_and_times_them_together(
    tmp_path: Path, stubs: dict[str, str]
) -> None:
    good = _patch(tmp_path, "kernel-good", "tests/GOOD_MARKER")
    bad = _patch(tmp_path, "kernel-bad", "FAIL_TESTS")
    result = _ab({**stubs, "SIDE_BY_SIDE": "1"}, f"{good},{bad}", "causal", "4096", "128,64")
    assert result.returncode == 0, result.stdout + result.stderr
    out = Path(stubs["OUT"])
    # base is built again as a control beside the variant that passed its tests
    assert (out / "variants.txt").read_text() == "sas_v0 base\nsas_v1 kernel-good\n"
    calls = Path(stubs["STUB_LOG"]).read_text().splitlines()
    # every side that built is built again, in parallel while the tests run, bfloat16 only
    namespaced = [line for line in calls if "--op-namespace" in line]
    assert sorted(Path(line.split(" | ")[1]).name for line in namespaced) == [
        "site-base",
        "site-kernel-bad",
        "site-kernel-good",
    ]
    assert {line.split(" | ")[3] for line in namespaced} == {"bf16"}
    side_by_side = [line for line in calls if line.startswith("-m bench.kernel_variants ")]
    assert len(side_by_side) == 1  # one pass by default, one process for every side
    for line in side_by_side:
        assert "sas_kernels_sas_v0.so" in line
        assert "sas_kernels_sas_v1.so" in line
        assert "sas_kernels_sas_v2.so" not in line  # kernel-bad failed its tests
        assert "--head-dims 128,64" in line
        assert Path(line.split(" | ")[1]).name == "site-base"
    assert not any(line.startswith("-m bench.kernel ") for line in calls)
    assert "geometric mean over base: sas_v1 0.990" in result.stdout
    assert sorted(p.name for p in out.glob("side-by-side-pass*.json")) == [
        "side-by-side-pass1.json"
    ]


def test_kernel_tests_can_be_skipped_and_side_by_side_passes_repeated(
    tmp_path: Path, stubs: dict[str, str]
) -> None:
    failing = _patch(tmp_path, "kernel-failing", "FAIL_TESTS")
    env = {**stubs, "SIDE_BY_SIDE": "1", "KERNEL_TESTS": "0", "PASSES": "2"}
    result = _ab(env, str(failing), "causal", "4096", "128")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = Path(stubs["STUB_LOG"]).read_text().splitlines()
    assert not any(line.startswith("-m pytest ") for line in calls)
    out = Path(stubs["OUT"])
    assert (out / "variants.txt").read_text() == "sas_v0 base\nsas_v1 kernel-failing\n"
    assert sorted(p.name for p in out.glob("side-by-side-pass*.json")) == [
        "side-by-side-pass1.json",
        "side-by-side-pass2.json",
    ]


def test_tile_cost_runs_on_the_side_by_side_libraries_before_the_passes(
    tmp_path: Path, stubs: dict[str, str]
) -> None:
    good = _patch(tmp_path, "kernel-good", "tests/GOOD_MARKER")
    env = {**stubs, "SIDE_BY_SIDE": "1", "TILE_COST": "1", "PASSES": "0"}
    result = _ab(env, str(good), "causal", "4096", "128")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = Path(stubs["STUB_LOG"]).read_text().splitlines()
    tile_cost = [line for line in calls if line.startswith("-m bench.kernel_tile_cost ")]
    assert len(tile_cost) == 2  # S16K and S4K, every side in one process each
    assert "--seq-len 16384" in tile_cost[0]
    assert "--blocks 4,8,16,32" in tile_cost[0]
    assert "--seq-len 4096" in tile_cost[1]
    for line in tile_cost:
        assert "sas_kernels_sas_v0.so" in line
        assert "sas_kernels_sas_v1.so" in line
        assert "--schedules plain,carried" in line
        assert Path(line.split(" | ")[1]).name == "site-base"
    assert "2.80 us per tile" in result.stdout
    out = Path(stubs["OUT"])
    assert sorted(p.name for p in out.glob("tile-cost-*.json")) == [
        "tile-cost-s16384.json",
        "tile-cost-s4096.json",
    ]
    assert not any(line.startswith("-m bench.kernel_variants ") for line in calls)  # PASSES=0
