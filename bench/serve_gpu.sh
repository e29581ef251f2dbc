#!/usr/bin/env bash
# The GPU serving run on the device machine: installs the carried wheels, builds the kernels,
# runs the CUDA-graph and model-engine GPU tests, then `python -m bench.serve_gpu ARGS`. The
# result JSON lands under OUT; a failed build prints the end of its log. With PY_SPY=1, py-spy
# samples our processes at the bench's --py-spy-points (marked `profiled` in the JSON) and the
# profiles land under OUT as one tarball.
#
#   [SKIP_GPU_TESTS=1] [PY_SPY=1] bash bench/serve_gpu.sh [serve_gpu args...]
#
# Needs .whl/ and .carry/ in the repository root (`python -m bench.device_carry` prepares both;
# name both in the device call's carry).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-/tmp/serve-gpu}
started=$(date +%s)
say() { echo "[t=$(($(date +%s) - started))s] $*"; }

mkdir -p "$out" /tmp/links /tmp/py-spy
ln -sfn "$repo/runtime" /tmp/links/sas_runtime
export PYTHONPATH=/tmp/links:$repo
source "$repo/bench/device_env.sh"

say "kernel build"
if ! MAX_JOBS=16 python3 -m sas_runtime.kernels.build --out /tmp/kernels >/tmp/build.log 2>&1; then
  tail -40 /tmp/build.log
  exit 1
fi
export SAS_KERNEL_LIBRARY=/tmp/kernels/sas_kernels.so

if [ -z "${SKIP_GPU_TESTS:-}" ]; then
  say "gpu tests (graphs, model engine)"
  (cd "$repo" && python3 -m pytest -q -x -p no:cacheprovider \
    tests/gpu/test_cuda_graphs_gpu.py tests/gpu/test_model_engine_gpu.py 2>&1 | tail -3)
fi

profile=()
[ -n "${PY_SPY:-}" ] && profile=(--py-spy /tmp/py-spy)
say "serve_gpu ${profile[*]} $*"
status=0
(cd "$repo" && python3 -m bench.serve_gpu --out "$out" "${profile[@]}" "$@") || status=$?
[ -n "${PY_SPY:-}" ] && tar czf "$out/py-spy.tgz" -C /tmp/py-spy .
say "done (serve_gpu exit $status)"
exit $status
