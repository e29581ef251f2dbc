#!/usr/bin/env bash
# The recorded run of the kernel as it is in this tree, on the device machine: build,
# compute-sanitizer (memcheck, racecheck, synccheck) on the small case, the full `python -m
# bench.kernel` with FlexAttention, ncu on the main case (S16K D128 random 0.25), then every GPU
# test. The tests come last so that a call's time limit cuts them first: kernel_ab.sh has
# already run the kernel's own GPU tests on any variant it measured. STEPS (some of
# sanitizer,bench,ncu,tests) runs only those; the build always runs. Everything lands under OUT:
# NAME.json (the bench's result), NAME-bench.txt, NAME-targets.txt (`bench.kernel_targets` of
# it), NAME-clocks.csv (the card's clock and power during the bench), NAME-build.log,
# NAME-gpu-tests.txt, NAME-sanitizer-TOOL.txt, NAME-ncu.txt, NAME-ncu-stalls.txt (the main
# case's stall reasons and tensor-pipe metrics), NAME-ncu-memory.txt (its DRAM bytes, L2 hit
# rate, time and clock), NAME-ncu-l2.txt (every L2 and DRAM counter), NAME-ncu-sass.csv (the
# stall samples of each SASS instruction), NAME-ncu-sass-stalls.txt (`python -m
# bench.ncu_stalls` of it) and NAME.ncu-rep. The `trace` step (only when named) builds the
# kernel again with its timeline on (SAS_KERNEL_TRACE=1) and runs `python -m
# bench.kernel_trace` on TRACE_CASE (cases as NCU_CASE's, ";"-separated): NAME-trace.json,
# NAME-trace.txt, and NAME-trace-clocks.csv (the card's clock and power through it, as
# NAME-clocks.csv through the bench). A step that fails is reported and the rest still
# run; the exit status says whether all passed. PATCHES (comma-separated patch files) are
# applied to the tree first, so a variant an A/B just measured can be recorded before it is
# committed.
#
#   [PATCHES=P1,P2] [STEPS=S1,S2] [NCU_CASE="MASK SEQ_LEN HEAD_DIM"] [TRACE_CASE=...] \
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
# The card's clock, power and throttle reasons every 100 ms into $1, until stop_clock_log.
start_clock_log() {
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active \
    --format=csv -lms 100 >"$1" 2>&1 &
  clock_log=$!
}
stop_clock_log() { kill "$clock_log" 2>/dev/null; }

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
  start_clock_log "$out/$name-clocks.csv"
  (cd "$repo" && timeout -s KILL 480 python3 -m bench.kernel --library "$SAS_KERNEL_LIBRARY" \
    --out "$out/$name.json" "$@" 2>&1 | tee "$out/$name-bench.txt" | grep "^S=") \
    || failed+=("bench")
  stop_clock_log
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
  # NCU_CASE="MASK SEQ_LEN HEAD_DIM" profiles another problem than the main case; several,
  # separated by ";", are profiled in turn from the one build, each file named with its case
  # (NAME-MASK-SSEQ_LEN-DHEAD_DIM-ncu.txt) when there is more than one.
  IFS=";" read -r -a ncu_cases <<<"${NCU_CASE:-random-0.25 16384 128}"
  for ncu_case in "${ncu_cases[@]}"; do
    read -r ncu_mask ncu_seq_len ncu_head_dim <<<"$ncu_case"
    tag=$name
    [ ${#ncu_cases[@]} -eq 1 ] || tag=$name-$ncu_mask-S$ncu_seq_len-D$ncu_head_dim
    say "ncu on $ncu_mask S$ncu_seq_len D$ncu_head_dim"
    # One profile, printed twice: the sections, and the raw stall-reason metrics (the sections
    # print only the cycles per issued instruction, not what the warps waited on).
    rm -f "$work/main-case.ncu-rep" "$work/main-case-raw.txt"
    (cd "$repo" && timeout -s KILL 120 ncu --clock-control none --set full -o "$work/main-case" \
      -k regex:block_sparse_fwd -s 2 -c 1 python3 -m bench.kernel_case --mask "$ncu_mask" \
      --seq-len "$ncu_seq_len" --head-dim "$ncu_head_dim" >"$out/$tag-ncu.txt" 2>&1 \
      && ncu -i "$work/main-case.ncu-rep" --page details >>"$out/$tag-ncu.txt" 2>&1 \
      && ncu -i "$work/main-case.ncu-rep" --page raw >"$work/main-case-raw.txt" 2>&1 \
      && grep -E "issue_stalled|^ *sm__pipe_tensor" "$work/main-case-raw.txt" \
      >"$out/$tag-ncu-stalls.txt") || failed+=("ncu $ncu_case")
    # Where the warps stall, per SASS instruction (the sampled stall reasons of each line), and
    # the report itself for the Nsight Compute UI.
    (ncu -i "$work/main-case.ncu-rep" --page source --csv --print-source sass \
      >"$out/$tag-ncu-sass.csv" 2>&1 \
      && cd "$repo" && python3 -m bench.ncu_stalls "$out/$tag-ncu-sass.csv" \
      >"$out/$tag-ncu-sass-stalls.txt") || failed+=("ncu source page $ncu_case")
    # What the launch moved: DRAM bytes read and written, the L2 hit rate, its time and clock
    # (run 20: the tile order decides how often the random rows read their K/V from DRAM).
    grep -E "^ *(dram__bytes_read\.sum|dram__bytes_write\.sum|lts__t_sector_hit_rate\.pct|gpu__time_duration\.sum|sm__cycles_elapsed\.avg\.per_second) " \
      "$work/main-case-raw.txt" >"$out/$tag-ncu-memory.txt" 2>/dev/null || true
    cat "$out/$tag-ncu-memory.txt"
    # Every L2 and DRAM counter of the profile (hits and misses by source and operation, the
    # traffic between the L2's two partitions): run 21's order still read K/V 1.4-1.7 times.
    grep -E "^ *(lts__|dram__)" "$work/main-case-raw.txt" >"$out/$tag-ncu-l2.txt" 2>/dev/null || true
    cp "$work/main-case.ncu-rep" "$out/$tag.ncu-rep" 2>/dev/null || true
    grep -E "Duration|Compute \(SM\) Throughput|Registers Per" "$out/$tag-ncu.txt" || true
    awk '/issue_stalled/ { gsub(",", "", $NF); print $NF, $1 }' "$out/$tag-ncu-stalls.txt" \
      | sort -g -r | head -8
    head -16 "$out/$tag-ncu-sass-stalls.txt" 2>/dev/null || true
  done
fi

if want trace; then
  say "traced build"
  if SAS_KERNEL_TRACE=1 MAX_JOBS=16 python3 -m sas_runtime.kernels.build --out "$work/traced" \
    --op-namespace sas_trace >"$out/$name-trace-build.log" 2>&1; then
    IFS=";" read -r -a trace_cases <<<"${TRACE_CASE:-random-0.1 4096 128}"
    case_args=()
    for trace_case in "${trace_cases[@]}"; do case_args+=(--case "$trace_case"); done
    say "bench.kernel_trace on ${#trace_cases[@]} cases"
    start_clock_log "$out/$name-trace-clocks.csv"
    (cd "$repo" && timeout -s KILL 300 python3 -m bench.kernel_trace --library "$SAS_KERNEL_LIBRARY" \
      --trace-library "$work/traced/sas_kernels_sas_trace.so" "${case_args[@]}" \
      --out "$out/$name-trace.json" >"$out/$name-trace.txt" 2>&1) || failed+=("trace")
    stop_clock_log
    cat "$out/$name-trace.txt"
  else
    tail -40 "$out/$name-trace-build.log"
    failed+=("traced build")
  fi
fi

if want tests; then
  say "GPU tests"
  (cd "$repo" && timeout -s KILL 240 python3 -m pytest -q -p no:cacheprovider tests/gpu \
    >"$out/$name-gpu-tests.txt" 2>&1) || failed+=("GPU tests")
  tail -3 "$out/$name-gpu-tests.txt"
fi

say "done${failed[*]:+; failed: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
