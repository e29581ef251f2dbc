#!/usr/bin/env bash
# The recorded run of the kernel as it is in this tree, on the device machine: build,
# compute-sanitizer (memcheck, racecheck, synccheck) on the small case, the full
# `python -m bench.kernel` with FlexAttention, ncu on the main case (S16K D128 random 0.25), then
# every GPU test. The tests come last so that a call's time limit cuts them first: kernel_ab.sh
# has already run the kernel's own GPU tests on any variant it measured. STEPS (some of
# sanitizer,bench,ncu,tests) runs only those; the build always runs. Everything lands under
# OUT: NAME.json (the bench's result), NAME-bench.txt, NAME-targets.txt (`bench.kernel_targets`
# of it), NAME-clocks.csv (the card's clock and power during the bench), NAME-build.log,
# NAME-gpu-tests.txt, NAME-sanitizer-TOOL.txt, NAME-ncu.txt, NAME-ncu-stalls.txt (the main
# case's stall reasons and tensor-pipe metrics), NAME-ncu-sass.csv (the stall samples of each
# SASS instruction), NAME-ncu-sass-stalls.txt (`python -m bench.ncu_stalls` of it) and
# NAME.ncu-rep. A step that fails is reported and the rest still run; the exit status says
# whether all passed. PATCHES (comma-separated patch files) are applied to the tree first, so a
# variant an A/B just measured can be recorded before it is committed.
#
#   [PATCHES=P1,P2] [STEPS=S1,S2] [NCU_CASE="MASK SEQ_LEN HEAD_DIM"] \
#     bash bench/kernel_record.sh NAME [bench.kernel args...]
#
# Needs .whl/ and .carry/ in the repository root (`python -m bench.device_carry` prepares both;
# name both in the device call's carry).
set -uo pipefail
name=${1:?usage: kernel_record.sh NAME [bench.kernel args...]}
shift
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${OUT:-/tmp/kernel-record}")
started=$(date +%s)
say() { echo "[t=$(($(date +%s) - started))s] $*"; }
failed=()
steps=",${STEPS:-sanitizer,bench,ncu,tests},"
want() { [[ $steps == *",$1,"* ]]; }

work=$(mktemp -d)
IFS=, read -r -a patches <<<"${PATCHES:-}"
for patch_file in "${patches[@]}"; do
  say "apply $patch_file"
  patch -s -p1 -d "$repo" <"$patch_file" || exit 1
done
mkdir -p "$out" "$work/links"
ln -s "$repo/runtime" "$work/links/sas_runtime"
export PYTHONPATH=$work/links:$repo${PYTHONPATH:+:$PYTHONPATH}
[ -n "${SAS_CUTLASS_INCLUDE:-}" ] || source "$repo/bench/device_env.sh"

say "kernel build"
if ! MAX_JOBS=16 python3 -m sas_runtime.kernels.build --out "$work/kernels" >"$out/$name-build.log" 2>&1; then
  tail -40 "$out/$name-build.log"
  say "build failed"
  exit 1
fi
export SAS_KERNEL_LIBRARY=$work/kernels/sas_kernels.so

for tool in memcheck racecheck synccheck; do
  want sanitizer || break
  say "compute-sanitizer $tool"
  (cd "$repo" && timeout -s KILL 90 compute-sanitizer --tool "$tool" --error-exitcode 3 \
    python3 tests/gpu/sanitize_small_case.py >"$out/$name-sanitizer-$tool.txt" 2>&1) \
    || failed+=("$tool")
  tail -2 "$out/$name-sanitizer-$tool.txt"
done

if want bench; then
  say "bench.kernel $*"
  # The card's clock, power and throttle reasons every 100 ms while the bench runs.
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active \
    --format=csv -lms 100 >"$out/$name-clocks.csv" 2>&1 &
  clock_log=$!
  (cd "$repo" && timeout -s KILL 480 python3 -m bench.kernel --library "$SAS_KERNEL_LIBRARY" \
    --out "$out/$name.json" "$@" 2>&1 | tee "$out/$name-bench.txt" | grep "^S=") \
    || failed+=("bench")
  kill "$clock_log" 2>/dev/null
  # Which of the issue's targets this record meets, read from its sustained graph figures.
  if [ -s "$out/$name.json" ]; then
    (cd "$repo" && python3 -m bench.kernel_targets "$out/$name.json" >"$out/$name-targets.txt" 2>&1) \
      || failed+=("targets")
    grep -v "^  " "$out/$name-targets.txt" || true
  fi
fi

if want ncu && ! command -v ncu >/dev/null; then
  say "no ncu on this machine"
elif want ncu; then
  # NCU_CASE="MASK SEQ_LEN HEAD_DIM" profiles another problem than the main case.
  read -r ncu_mask ncu_seq_len ncu_head_dim <<<"${NCU_CASE:-random-0.25 16384 128}"
  say "ncu on $ncu_mask S$ncu_seq_len D$ncu_head_dim"
  # One profile, printed twice: the sections, and the raw stall-reason metrics (the sections
  # print only the cycles per issued instruction, not what the warps waited on).
  (cd "$repo" && timeout -s KILL 120 ncu --clock-control none --set full -o "$work/main-case" \
    -k regex:block_sparse_fwd -s 2 -c 1 python3 -m bench.kernel_case --mask "$ncu_mask" \
    --seq-len "$ncu_seq_len" --head-dim "$ncu_head_dim" >"$out/$name-ncu.txt" 2>&1 \
    && ncu -i "$work/main-case.ncu-rep" --page details >>"$out/$name-ncu.txt" 2>&1 \
    && ncu -i "$work/main-case.ncu-rep" --page raw 2>&1 | grep -E "issue_stalled|^ *sm__pipe_tensor" \
    >"$out/$name-ncu-stalls.txt") || failed+=("ncu")
  # Where the warps stall, per SASS instruction (the sampled stall reasons of each line), and
  # the report itself for the Nsight Compute UI.
  (ncu -i "$work/main-case.ncu-rep" --page source --csv --print-source sass \
    >"$out/$name-ncu-sass.csv" 2>&1 \
    && cd "$repo" && python3 -m bench.ncu_stalls "$out/$name-ncu-sass.csv" \
    >"$out/$name-ncu-sass-stalls.txt") || failed+=("ncu source page")
  cp "$work/main-case.ncu-rep" "$out/$name.ncu-rep" 2>/dev/null || true
  grep -E "Duration|Compute \(SM\) Throughput|Registers Per" "$out/$name-ncu.txt" || true
  awk '/issue_stalled/ { gsub(",", "", $NF); print $NF, $1 }' "$out/$name-ncu-stalls.txt" \
    | sort -g -r | head -8
  head -16 "$out/$name-ncu-sass-stalls.txt" 2>/dev/null || true
fi

if want tests; then
  say "GPU tests"
  (cd "$repo" && timeout -s KILL 240 python3 -m pytest -q -p no:cacheprovider tests/gpu \
    >"$out/$name-gpu-tests.txt" 2>&1) || failed+=("GPU tests")
  tail -3 "$out/$name-gpu-tests.txt"
fi

say "done${failed[*]:+; failed: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
