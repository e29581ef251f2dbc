"""bench/kernel_record.sh without a GPU: stand-ins for python3, compute-sanitizer, ncu and
nvidia-smi record what the script asks of them; STUB_FAIL names the steps that fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.bench.device_stubs import stub_environment

REPO = Path(__file__).resolve().parents[3]

PYTHON3 = f"""#!{sys.executable}
import json, os, pathlib, sys
args = sys.argv[1:]
failing = os.environ.get("STUB_FAIL", "").split(",")
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(" ".join(args) + "\\n")
if args[:2] == ["-m", "sas_runtime.kernels.build"]:
    if "build" in failing:
        sys.exit("error: stub build failure")
    out = pathlib.Path(args[args.index("--out") + 1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "sas_kernels.so").touch()
elif args[:2] == ["-m", "pytest"]:
    print("1 failed" if "tests" in failing else "60 passed, 2 skipped")
    sys.exit(1 if "tests" in failing else 0)
elif args[:1] == ["tests/gpu/sanitize_small_case.py"]:
    print("rmse 2.5e-04")
elif args[:2] == ["-m", "bench.kernel"]:
    if "bench" in failing:
        sys.exit("Traceback: stub bench failure")
    out = pathlib.Path(args[args.index("--out") + 1])
    row = {{"seq_len": 16384, "head_dim": 128, "mask": "causal", "density": 0.5,
           "ours_ms": 1.0, "ours_tflops": 590.0, "ours_graph_ms": 1.0,
           "time_over_density_x_cudnn": 0.95, "graph_time_over_density_x_cudnn": 0.95,
           "speedup_vs_flex": 1.6, "graph_speedup_vs_flex": 1.6}}
    out.write_text(json.dumps({{"environment": {{}}, "rows": [row]}}))
    print("S=  4096 D=128 causal stub")
elif args[:2] == ["-m", "bench.kernel_case"]:
    print("random-0.25 S=16384 D=128: 1.000 ms per launch")
elif args[:2] == ["-m", "bench.kernel_trace"]:
    if "trace" in failing:
        sys.exit("Traceback: stub trace failure")
    print("random-0.1 S4096 D128: base 0.0770 ms, traced 0.0775 ms (1.006 x base)")
elif args[:2] in (["-m", "bench.ncu_stalls"], ["-m", "bench.kernel_targets"]):
    import runpy
    sys.path.insert(0, {str(REPO)!r})  # the real module, also for a copied tree
    sys.argv = args[1:]
    runpy.run_module(args[1], run_name="__main__")
else:
    sys.exit(f"unexpected python3 {{args}}")
"""

SANITIZER = """#!/bin/sh
echo "sanitizer $2" >>"$STUB_LOG"
case ",$STUB_FAIL," in *",$2,"*) echo "========= ERROR SUMMARY: 1 error"; exit 3 ;; esac
shift 4
"$@"
echo "========= ERROR SUMMARY: 0 errors"
"""

NCU = """#!/bin/sh
echo "ncu $*" >>"$STUB_LOG"
case " $* " in
  *" --page raw "*)
    echo "    smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio   inst  0.41"
    echo "    smsp__average_warps_issue_stalled_wait_per_issue_active.ratio      inst  1.20"
    echo "    dram__bytes_read.sum                                              Mbyte 504.76"
    echo "    lts__t_sectors_srcunit_ltcfabric.sum                              sector 1,234"
    exit 0 ;;
  *" --page source "*)
    echo '"Address","Source","stall_barrier","stall_wait"'
    echo '"0x7f00","WARPGROUP.DEPBAR.LE gsb0, 0x0","90","10"'
    exit 0 ;;
  *" -i "*) echo "    Section: Warp State Statistics"; exit 0 ;;
esac
while [ "$1" != python3 ]; do shift; done
"$@"
echo "    Duration                         us     1000.00"
"""


@pytest.fixture
def stubs(tmp_path: Path) -> dict[str, str]:
    return stub_environment(
        tmp_path, {"python3": PYTHON3, "compute-sanitizer": SANITIZER, "ncu": NCU}
    )


def _record(
    env: dict[str, str], *args: str, fail: str = "", tree: Path = REPO
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "bench/kernel_record.sh", "kernel-test", *args],
        cwd=tree,
        env={**env, "STUB_FAIL": fail},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_step_runs_and_lands_under_out(stubs: dict[str, str]) -> None:
    result = _record(stubs, "--seq-lens", "4096")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = Path(stubs["STUB_LOG"]).read_text()
    assert "sanitizer memcheck" in calls
    assert "sanitizer racecheck" in calls
    assert "sanitizer synccheck" in calls
    bench = next(line for line in calls.splitlines() if line.startswith("-m bench.kernel "))
    assert bench.endswith("--seq-lens 4096")  # the bench's own arguments are passed on
    assert "--library" in bench
    assert "--clock-control none" in calls  # ncu leaves the clocks alone
    assert "--mask random-0.25 --seq-len 16384 --head-dim 128" in calls  # the main case
    out = Path(stubs["OUT"])
    assert (out / "kernel-test.json").exists()
    targets = (out / "kernel-test-targets.txt").read_text()
    assert "causal within 10% of cuDNN causal: 1 of 1 rows hold" in targets
    assert "  not held: D128 S16384 causal: 590.00" in targets  # 600 TFLOPS missed
    for part in ("gpu-tests.txt", "bench.txt", "clocks.csv", "ncu.txt", "sanitizer-racecheck.txt"):
        assert (out / f"kernel-test-{part}").stat().st_size > 0, part
    ncu = (out / "kernel-test-ncu.txt").read_text()
    assert "per launch" in ncu  # profiled
    assert "Warp State Statistics" in ncu  # then printed
    assert "stalled_wait" in (out / "kernel-test-ncu-stalls.txt").read_text()
    assert "stalled_wait" in result.stdout  # the top stall reasons are shown
    sass = (out / "kernel-test-ncu-sass-stalls.txt").read_text()
    assert "/*0000*/ WARPGROUP.DEPBAR.LE gsb0, 0x0" in sass  # and the instructions holding them
    assert "dram__bytes_read.sum" in (out / "kernel-test-ncu-memory.txt").read_text()
    l2 = (out / "kernel-test-ncu-l2.txt").read_text().splitlines()
    assert [line.split()[0] for line in l2] == [
        "dram__bytes_read.sum",
        "lts__t_sectors_srcunit_ltcfabric.sum",
    ]
    assert result.stdout.rstrip().endswith("done")


def test_ncu_can_profile_another_case(stubs: dict[str, str]) -> None:
    result = _record({**stubs, "STEPS": "ncu", "NCU_CASE": "random-0.1 4096 64"})
    assert result.returncode == 0, result.stdout + result.stderr
    calls = Path(stubs["STUB_LOG"]).read_text()
    assert "--mask random-0.1 --seq-len 4096 --head-dim 64" in calls
    assert "-m bench.kernel " not in calls  # only the steps asked for


def test_ncu_profiles_several_cases_from_one_build_each_in_its_own_files(
    stubs: dict[str, str],
) -> None:
    cases = "fixed-shared-4 4096 128;fixed-random-4 4096 128"
    result = _record({**stubs, "STEPS": "ncu", "NCU_CASE": cases})
    assert result.returncode == 0, result.stdout + result.stderr
    calls = Path(stubs["STUB_LOG"]).read_text()
    assert calls.count("-m sas_runtime.kernels.build") == 1
    assert "--mask fixed-shared-4 --seq-len 4096" in calls
    assert "--mask fixed-random-4 --seq-len 4096" in calls
    out = Path(stubs["OUT"])
    for case in ("fixed-shared-4-S4096-D128", "fixed-random-4-S4096-D128"):
        assert "per launch" in (out / f"kernel-test-{case}-ncu.txt").read_text()
        assert (out / f"kernel-test-{case}-ncu-sass-stalls.txt").stat().st_size > 0


def test_the_trace_step_builds_a_traced_library_and_runs_every_case(
    stubs: dict[str, str],
) -> None:
    cases = "random-0.1 4096 128;fixed-random-4 4096 64"
    result = _record({**stubs, "STEPS": "trace", "TRACE_CASE": cases})
    assert result.returncode == 0, result.stdout + result.stderr
    calls = Path(stubs["STUB_LOG"]).read_text().splitlines()
    builds = [line for line in calls if line.startswith("-m sas_runtime.kernels.build")]
    assert len(builds) == 2
    assert "--op-namespace sas_trace" in builds[1]
    trace = next(line for line in calls if line.startswith("-m bench.kernel_trace"))
    assert "--case random-0.1 4096 128 --case fixed-random-4 4096 64" in trace
    assert "sas_kernels_sas_trace.so" in trace
    assert "1.006 x base" in result.stdout
    failing = _record({**stubs, "STEPS": "trace"}, fail="trace")
    assert failing.returncode != 0
    assert "failed: trace" in failing.stdout


def test_the_trace_step_runs_only_when_named(stubs: dict[str, str]) -> None:
    result = _record(stubs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bench.kernel_trace" not in Path(stubs["STUB_LOG"]).read_text()


def test_a_failing_step_is_reported_and_the_rest_still_run(stubs: dict[str, str]) -> None:
    result = _record(stubs, fail="tests,racecheck")
    assert result.returncode != 0
    assert "failed: racecheck GPU tests" in result.stdout
    assert (Path(stubs["OUT"]) / "kernel-test.json").exists()
    assert "sanitizer synccheck" in Path(stubs["STUB_LOG"]).read_text()


def test_a_build_failure_ends_the_run_with_its_log(stubs: dict[str, str]) -> None:
    result = _record(stubs, fail="build")
    assert result.returncode != 0
    assert "stub build failure" in result.stdout
    assert "-m bench.kernel" not in Path(stubs["STUB_LOG"]).read_text()


def test_patches_are_applied_before_the_build_and_a_bad_one_stops_it(
    tmp_path: Path, stubs: dict[str, str]
) -> None:
    # A copy of the script in a tree of its own: PATCHES change the tree they run in.
    tree = tmp_path / "tree"
    (tree / "bench").mkdir(parents=True)
    (tree / "bench" / "kernel_record.sh").write_text((REPO / "bench/kernel_record.sh").read_text())
    good = tmp_path / "good.patch"
    good.write_text("--- a/tests/MARKER\n+++ b/tests/MARKER\n@@ -0,0 +1 @@\n+marker\n")
    bad = tmp_path / "bad.patch"
    bad.write_text("--- a/runtime/nope.py\n+++ b/runtime/nope.py\n@@ -1 +1 @@\n-x\n+y\n")
    applied = _record({**stubs, "PATCHES": str(good)}, tree=tree)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert (tree / "tests" / "MARKER").read_text() == "marker\n"
    calls = Path(stubs["STUB_LOG"])
    calls.unlink()
    refused = _record({**stubs, "PATCHES": str(bad)}, tree=tree)
    assert refused.returncode != 0
    assert not calls.exists()  # nothing built, tested or benched


def test_the_gpu_tests_run_last_so_a_time_limit_cuts_them_first(stubs: dict[str, str]) -> None:
    result = _record(stubs)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = Path(stubs["STUB_LOG"]).read_text().splitlines()

    def position(prefix: str) -> int:
        return next(i for i, line in enumerate(calls) if line.startswith(prefix))

    order = [
        position("-m sas_runtime.kernels.build"),
        position("sanitizer memcheck"),
        position("-m bench.kernel "),
        position("ncu "),
        position("-m pytest"),
    ]
    assert order == sorted(order), calls


def test_steps_pick_what_runs_after_the_build(stubs: dict[str, str]) -> None:
    result = _record({**stubs, "STEPS": "ncu"})
    assert result.returncode == 0, result.stdout + result.stderr
    calls = Path(stubs["STUB_LOG"]).read_text()
    assert "-m sas_runtime.kernels.build" in calls
    assert "ncu " in calls
    for skipped in ("sanitizer", "-m bench.kernel ", "-m pytest"):
        assert skipped not in calls, skipped
