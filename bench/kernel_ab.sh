#!/usr/bin/env bash
# A/B of kernel changes on the GPU machine: builds the kernels from HEAD ("base") and from HEAD
# with each PATCH applied (a "variant" per patch, named by the patch file), runs each variant's
# own patched copy of the kernel GPU tests on it (one that fails or hangs is dropped), then
# bench/kernel.py for base and the variants alternated, twice per head dim, writing JSON and a
# log under OUT, and last the variant/base ratios (`python -m bench.kernel_ab_summary OUT`).
#
#   [SANITIZE=1|NAME,...] [KERNEL_TESTS=0] [SIDE_BY_SIDE=1 [PASSES=N] [TILE_COST=1]] \
#     bash bench/kernel_ab.sh PATCH[,PATCH...] [MASKS] [SEQ_LENS] [HEAD_DIMS]
#   (NAME: a patch's file name without .patch, or base; KERNEL_TESTS, SIDE_BY_SIDE, TILE_COST:
#   below)
#
# Needs .whl/ and .carry/ in the repository root (bench/device_env.sh installs them; `python -m
# bench.device_carry` prepares both to carry), unless SAS_CUTLASS_INCLUDE is set already.
# Run 5 (2026-12-04), one patch and five masks, took 278 s on an H200 (build 37 s, tests 51 s,
# eight benches of ~24 s); each further variant adds its tests and four benches, and each
# sanitized side up to 3 x 90 s (sanitizer runs are not timed yet). Run 12 (H100), SIDE_BY_SIDE=1 with
# three patches, D128, S4K/S16K and five masks: 330 s (builds 47 s, tests 129 s, one pass 154 s).
set -euo pipefail
IFS=, read -r -a patches <<<"$1"
masks=${2:-window-1024,global-window,causal,random-0.1}
seq_lens=${3:-4096,16384,32768}
IFS=, read -r -a head_dims <<<"${4:-128,64}"
out=$(realpath -m "${OUT:-/tmp/kernel-ab}")
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
started=$(date +%s)
say() { echo "[t=$(($(date +%s) - started))s] $*"; }
[ -n "${SAS_CUTLASS_INCLUDE:-}" ] || source "$repo/bench/device_env.sh"

# Each side is a copy of runtime/ and tests/ (a patch may change both: its paths are a/runtime/...,
# a/tests/...), with runtime/ importable as sas_runtime from site-SIDE.
mkdir -p "$out"
sides=(base)
for patch_file in - "${patches[@]}"; do
  side=base
  [ "$patch_file" = - ] || side=$(basename "$patch_file" .patch)
  mkdir -p "$work/tree-$side" "$work/site-$side"
  cp -r "$repo/runtime" "$repo/tests" "$repo/hack" "$repo/pyproject.toml" "$work/tree-$side/"
  ln -s "$work/tree-$side/runtime" "$work/site-$side/sas_runtime"
  [ "$patch_file" = - ] && continue
  patch_path=$(realpath "$patch_file")
  (cd "$work/tree-$side" && patch -s -p1 <"$patch_path")
  sides+=("$side")
done

# Builds run side by side; their logs land under OUT. A variant that does not build is dropped,
# a base that does not build ends the run.
say "build ${sides[*]}"
declare -A builds
for side in "${sides[@]}"; do
  PYTHONPATH="$work/site-$side:${PYTHONPATH:-}" MAX_JOBS=$((16 / ${#sides[@]} + 1)) \
    python3 -m sas_runtime.kernels.build --out "$work/build-$side" >"$out/$side-build.log" 2>&1 &
  builds[$side]=$!
done
built=()
for side in "${sides[@]}"; do
  if wait "${builds[$side]}"; then
    built+=("$side")
  else
    tail -30 "$out/$side-build.log"
    say "$side: build failed"
    [ "$side" = base ] && exit 1
  fi
done
library() { echo "$work/build-$1/sas_kernels.so"; }
# Runs a command in SIDE's tree, with its sas_runtime, its library and its own torch.compile
# caches: Inductor's cache key leaves out a custom op's schema, so code compiled against one
# side's op (run 7: v14's extra tile_order argument) would be replayed against another's.
in_tree() {
  local side=$1
  shift
  (cd "$work/tree-$side" && PYTHONPATH="$work/site-$side:$work/tree-$side:${PYTHONPATH:-}" \
    SAS_KERNEL_LIBRARY=$(library "$side") TORCHINDUCTOR_CACHE_DIR="$work/inductor-$side" \
    TRITON_CACHE_DIR="$work/triton-$side" "$@")
}

# SIDE_BY_SIDE=1 (below): every built side is built again under its own op namespace, side by
# side and while the tests run; the benchmark runs bfloat16 only, so fp16 is left out.
if [ "${SIDE_BY_SIDE:-0}" = 1 ]; then
  declare -A variant_builds variant_numbers
  number=0
  for side in "${built[@]}"; do
    say "build $side as sas_v$number"
    PYTHONPATH="$work/site-$side:${PYTHONPATH:-}" MAX_JOBS=$((16 / ${#built[@]} + 1)) \
      SAS_KERNEL_DTYPES=bf16 python3 -m sas_runtime.kernels.build --out "$work/variant-$side" \
      --op-namespace "sas_v$number" >"$out/$side-variant-build.log" 2>&1 &
    variant_builds[$side]=$!
    variant_numbers[$side]=$number
    number=$((number + 1))
  done
fi

# SANITIZE=1 (every side) or SANITIZE=NAME[,NAME...] (those sides, "base" among them):
# compute-sanitizer's memcheck, racecheck and synccheck on one small launch
# (tests/gpu/sanitize_small_case.py), 90 s each; a tool that reports errors drops a variant, one
# that runs out of time is reported and the variant kept.
selected() { [ "${SANITIZE:-0}" = 1 ] || [[ ",${SANITIZE:-}," == *",$1,"* ]]; }
sanitize() {
  local side=$1 tool
  for tool in memcheck racecheck synccheck; do
    say "compute-sanitizer $tool on $side"
    if in_tree "$side" timeout -s KILL 90 compute-sanitizer --tool "$tool" --error-exitcode 3 \
      python3 tests/gpu/sanitize_small_case.py >"$out/$side-sanitizer-$tool.txt" 2>&1; then
      tail -2 "$out/$side-sanitizer-$tool.txt"
    else
      local status=$?
      tail -20 "$out/$side-sanitizer-$tool.txt"
      if [ "$status" = 137 ]; then
        say "$side: $tool ran out of its 90 s (kept)"
      else
        say "$side: $tool failed"
        return 1
      fi
    fi
  done
}
if selected base; then sanitize base || true; fi

# A variant that hangs on the GPU would otherwise spend the whole call: its tests get 150 s
# (36 passed in ~35 s in run 5), and the names of those that ran are kept.
kept=(base)
# KERNEL_TESTS=0 skips them (for patches whose tests passed in an earlier call).
for side in "${built[@]:1}"; do
  if [ "${KERNEL_TESTS:-1}" = 0 ]; then
    kept+=("$side")
    continue
  fi
  say "kernel GPU tests on $side"
  (in_tree "$side" env PYTHONUNBUFFERED=1 timeout -s KILL 150 \
    python3 -m pytest -v -x -p no:cacheprovider tests/gpu/test_block_sparse_attention.py \
    | tee "$out/$side-tests-full.txt" | grep --line-buffered -E "PASSED|FAILED|ERROR|passed|failed" \
    | tee "$out/$side-tests.txt" | tail -3) || true
  if ! grep -qE "[0-9]+ passed" "$out/$side-tests.txt" \
    || grep -qE "[0-9]+ (failed|errors?)\b" "$out/$side-tests.txt"; then
    say "$side: tests failed or hung, not benchmarked"
    continue
  fi
  if selected "$side" && ! sanitize "$side"; then
    say "$side: not benchmarked"
    continue
  fi
  kept+=("$side")
done
[ ${#kept[@]} -gt 1 ] || { say "no variant left to benchmark"; exit 1; }

# SIDE_BY_SIDE=1: base and each kept variant, built again under their own op namespace
# (base as sas_v0, a control: what two builds of one source read apart is the method's noise;
# the variants sas_v1, sas_v2, ... in patch order; OUT/variants.txt maps them) and `python -m
# bench.kernel_variants` times them all in one process, row by row, every side in every
# position of the order once, PASSES times (default 1); its own output replaces the alternated
# benches and kernel_ab_summary. For patches that leave the op's arguments alone.
if [ "${SIDE_BY_SIDE:-0}" = 1 ]; then
  variant_args=()
  for side in "${kept[@]}"; do
    number=${variant_numbers[$side]}
    if wait "${variant_builds[$side]}"; then
      variant_args+=(--variant "$work/variant-$side/sas_kernels_sas_v$number.so")
      echo "sas_v$number $side" >>"$out/variants.txt"
    else
      tail -30 "$out/$side-variant-build.log"
      say "$side: variant build failed"
    fi
  done
  [ ${#variant_args[@]} -gt 0 ] || { say "no variant left to benchmark"; exit 1; }
  # TILE_COST=1: first `python -m bench.kernel_tile_cost` on the same sides in one process, at
  # D128: each side's cost per tile and per block, fitted on masks of 4-32 random blocks a tile
  # at S16K and 2-16 at S4K, both schedules (run 14: 2.80 us per tile at S16K, L2 or not).
  # PASSES=0 leaves out the five-mask passes after it.
  if [ "${TILE_COST:-0}" = 1 ]; then
    for tile_case in "16384 4,8,16,32" "4096 2,4,8,16"; do
      read -r tile_seq_len tile_blocks <<<"$tile_case"
      say "tile cost, S$tile_seq_len"
      (cd "$repo" && PYTHONPATH="$work/site-base:$repo:${PYTHONPATH:-}" timeout -s KILL 150 \
        python3 -m bench.kernel_tile_cost --library "$(library base)" "${variant_args[@]}" \
        --seq-len "$tile_seq_len" --head-dim 128 --blocks "$tile_blocks" --layouts random \
        --schedules plain,carried --out "$out/tile-cost-s$tile_seq_len.json" \
        >"$out/tile-cost-s$tile_seq_len.txt" 2>&1) \
        || say "tile cost S$tile_seq_len failed: $(tail -1 "$out/tile-cost-s$tile_seq_len.txt")"
      grep -E " fit: " "$out/tile-cost-s$tile_seq_len.txt" || true
    done
  fi
  for pass in $(seq "${PASSES:-1}"); do
    say "side by side, pass $pass"
    (cd "$repo" && PYTHONPATH="$work/site-base:$repo:${PYTHONPATH:-}" timeout -s KILL 500 \
      python3 -m bench.kernel_variants --library "$(library base)" "${variant_args[@]}" \
      --seq-lens "$seq_lens" --head-dims "$(IFS=,; echo "${head_dims[*]}")" --masks "$masks" \
      --out "$out/side-by-side-pass$pass.json" >"$out/side-by-side-pass$pass.txt" 2>&1) \
      || say "side by side pass $pass failed: $(tail -1 "$out/side-by-side-pass$pass.txt")"
    grep -E "^S=|^geometric" "$out/side-by-side-pass$pass.txt" || true
  done
  say done
  exit 0
fi
declare -A dropped

# Each bench gets 200 s (its rows are timed under a sustained load, ~2 s each); a variant whose
# bench fails or hangs is left out of the rest.
for pass in 1 2; do
  for head_dim in "${head_dims[@]}"; do
    for side in "${kept[@]}"; do
      [ -n "${dropped[$side]:-}" ] && continue
      say "bench $side D$head_dim pass $pass"
      if ! (cd "$repo" && PYTHONPATH="$work/site-$side:$repo:${PYTHONPATH:-}" \
        timeout -s KILL 200 python3 -m bench.kernel --seq-lens "$seq_lens" \
        --head-dims "$head_dim" --masks "$masks" --no-flex --library "$(library "$side")" \
        --out "$out/$side-d$head_dim-pass$pass.json" >"$out/$side-d$head_dim-pass$pass.txt" 2>&1); then
        tail -20 "$out/$side-d$head_dim-pass$pass.txt"
        say "$side: bench failed or hung, left out from here on"
        [ "$side" = base ] && break 3
        dropped[$side]=1
        continue
      fi
      grep "^S=" "$out/$side-d$head_dim-pass$pass.txt" || true
    done
  done
done
(cd "$repo" && python3 -m bench.kernel_ab_summary "$out" | tee "$out/summary.txt")
say done
