# Sourced by the device-side scripts (bench/serve_gpu.sh, bench/kernel_ab.sh): installs the
# carried wheels (.whl/) into /tmp/site, unpacks CUTLASS's headers from .carry/, exports
# PYTHONPATH, PATH, HF_HUB_OFFLINE and SAS_CUTLASS_INCLUDE, and prints the GPU's state. Needs
# `repo` set to the repository root, and .whl/ and .carry/ there (`python -m bench.device_carry`
# prepares both; name both in the device call's carry).
mkdir -p /tmp/site /tmp/cutlass
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site "$repo"/.whl/*.whl
tar -xJf "$repo/.carry/cutlass-include.tar.xz" -C /tmp/cutlass
export PYTHONPATH=/tmp/site:$repo/.carry/model${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
export HF_HUB_OFFLINE=1 SAS_CUTLASS_INCLUDE=/tmp/cutlass/include
nvidia-smi --query-gpu=name,driver_version,clocks.current.sm,temperature.gpu,power.draw \
  --format=csv
