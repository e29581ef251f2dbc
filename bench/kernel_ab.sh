#!/usr/bin/env bash
# A/B of a kernel change on the GPU machine: builds the kernels from HEAD ("base") and from HEAD
# with PATCH applied ("variant"), runs the kernel GPU tests on the variant, then bench/kernel.py
# for base and variant alternated, twice per head dim, writing JSON and a log under OUT.
#
#   [SANITIZE=1] bash bench/kernel_ab.sh PATCH [MASKS] [SEQ_LENS]
#
# Needs on PYTHONPATH what the device image lacks and SAS_CUTLASS_INCLUDE pointing at CUTLASS's
# include/: `python -m bench.device_carry` prepares both to carry. Run 4 (2026-11-30) took 197 s on an H200 with the defaults below.
set -euo pipefail
patch_file=$(realpath "$1")
masks=${2:-window-1024,global-window,causal,random-0.1}
seq_lens=${3:-4096,16384,32768}
out=$(realpath -m "${OUT:-/tmp/kernel-ab}")
name=$(basename "$patch_file" .patch)
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
started=$(date +%s)
say() { echo "[t=$(($(date +%s) - started))s] $*"; }

mkdir -p "$out" "$work/base" "$work/variant"
cp -r "$repo/runtime" "$work/base/sas_runtime"
cp -r "$repo/runtime" "$work/variant/sas_runtime"
(cd "$work/variant/sas_runtime" && patch -s -p2 <"$patch_file")

say "build base and variant"
for side in base variant; do
  PYTHONPATH="$work/$side:${PYTHONPATH:-}" MAX_JOBS=8 \
    python3 -m sas_runtime.kernels.build --out "$work/build-$side" >"$work/build-$side.log" 2>&1 &
done
wait
base_lib=$work/build-base/sas_kernels.so
variant_lib=$work/build-variant/sas_kernels.so

# A variant that hangs on the GPU would otherwise spend the whole call: the tests get 150 s
# (36 pass in ~35 s), and the names of those that ran are kept.
say "kernel GPU tests on the variant"
(cd "$repo" && PYTHONPATH="$work/variant:$repo:${PYTHONPATH:-}" SAS_KERNEL_LIBRARY=$variant_lib \
  PYTHONUNBUFFERED=1 timeout -s KILL 150 python3 -m pytest -v -x -p no:cacheprovider \
  tests/gpu/test_block_sparse_attention.py | grep --line-buffered -E "PASSED|FAILED|ERROR|passed|failed" \
  | tee "$out/$name-tests.txt" | tail -5) || true
grep -qE "[0-9]+ passed" "$out/$name-tests.txt" && ! grep -qE "[0-9]+ (failed|errors?)\b" "$out/$name-tests.txt" \
  || { say "variant tests failed or hung: no benchmark"; exit 1; }

# SANITIZE=1: compute-sanitizer's memcheck, racecheck and synccheck on one small launch of the
# variant (tests/gpu/sanitize_small_case.py), 90 s each; a tool that reports errors stops the run.
if [ "${SANITIZE:-0}" = 1 ]; then
  for tool in memcheck racecheck synccheck; do
    say "compute-sanitizer $tool on the variant"
    (cd "$repo" && PYTHONPATH="$work/variant:$repo:${PYTHONPATH:-}" SAS_KERNEL_LIBRARY=$variant_lib \
      timeout -s KILL 90 compute-sanitizer --tool "$tool" --error-exitcode 3 \
      python3 tests/gpu/sanitize_small_case.py >"$out/$name-sanitizer-$tool.txt" 2>&1) \
      || { tail -20 "$out/$name-sanitizer-$tool.txt"; say "$tool failed: no benchmark"; exit 1; }
    tail -2 "$out/$name-sanitizer-$tool.txt"
  done
fi

for pass in 1 2; do
  for head_dim in 128 64; do
    for side in base variant; do
      library=$base_lib
      [ "$side" = variant ] && library=$variant_lib
      say "bench $side D$head_dim pass $pass"
      (cd "$repo" && PYTHONPATH="$work/$side:$repo:${PYTHONPATH:-}" python3 -m bench.kernel \
        --seq-lens "$seq_lens" --head-dims "$head_dim" --masks "$masks" --no-flex \
        --library "$library" --out "$out/$name-$side-d$head_dim-pass$pass.json" | grep "^S=")
    done
  done
done
say done
