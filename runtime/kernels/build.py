"""Builds the kernels' torch extension (JIT on a GPU machine, ahead of time for the image).

`python -m sas_runtime.kernels.build --out DIR` compiles `csrc/` into `DIR/sas_kernels.so`;
`ops.load_library` loads it. The instantiation matrix (dtype x head dim) is generated into the
build directory, one `fwd_<dtype>_hdim<D>_sm90.cu` each, and trimmed by env knobs:

- `SAS_KERNEL_DTYPES`: comma list of `bf16`, `fp16` (default both)
- `SAS_KERNEL_HEAD_DIMS`: comma list of `64`, `128` (default both)
- `SAS_KERNEL_TRACE=1`: the kernel writes its own timeline (csrc/trace.h) and the library
  registers `last_trace()`, for bench/kernel_trace.py; never for serving
- `SAS_CUTLASS_INCLUDE`: CUTLASS/CuTe `include/` (default: the nvidia-cutlass wheel's)
- `CUDA_HOME`: the CUDA toolkit; when unset and torch finds none, the cuda-toolkit wheel's
  `nvidia/cu13` is used through a shim directory in the build cache (torch's builder wants
  `lib64/` and an unversioned `libcudart.so`, which the wheel lacks).

`--op-namespace sas_NAME` builds `DIR/sas_kernels_sas_NAME.so` with the C++ namespace and the op
namespace both renamed (`torch.ops.sas_NAME.block_sparse_attention_fwd`): a variant of the kernel
that loads beside the runtime's own and shares no symbol with it, for bench/kernel_variants.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CSRC_DIR",
    "LIBRARY_NAME",
    "LINK_FLAGS",
    "OP_NAMESPACE",
    "BuildMatrix",
    "build_extension",
    "check_links_shared_libstdcxx",
    "check_op_namespace",
    "cuda_home",
    "cutlass_include_dir",
    "default_build_dir",
    "defined_symbols",
    "library_name",
    "namespace_defines",
    "nvcc_flags",
    "write_instantiations",
]

CSRC_DIR = Path(__file__).resolve().parent / "csrc"
LIBRARY_NAME = "sas_kernels"
OP_NAMESPACE = "sas"
_VARIANT_NAMESPACE = re.compile(r"sas_[a-z0-9_]+")
SM90_GENCODE = "-gencode=arch=compute_90a,code=sm_90a"
LINK_FLAGS = ("-l:libstdc++.so.6",)
"""libstdc++ linked as the shared library torch itself uses. Without it our GPU machines'
toolchain (g++ 13.3, Ubuntu 24.04; why is not known) copied members of libstdc++.a into the
extension, whose calls then bound to that copy: a second, uninitialised std::locale, so a
refusal whose message prints a number crashed the process (2026-12-07) instead of raising."""
_OWN_LIBSTDCXX = re.compile(r"^[0-9a-f]+ [TDBR] (_ZNSt6locale|_ZNSt8ios_base)", re.MULTILINE)
_DTYPES = {"bf16": "kBFloat16", "fp16": "kFloat16"}
_HEAD_DIMS = (64, 128)


@dataclass(frozen=True, slots=True)
class BuildMatrix:
    """Which (dtype, head dim) instantiations to compile, and whether they trace."""

    dtypes: tuple[str, ...] = ("bf16", "fp16")
    head_dims: tuple[int, ...] = _HEAD_DIMS
    trace: bool = False

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str]) -> BuildMatrix:
        dtypes = tuple(d.strip() for d in env.get("SAS_KERNEL_DTYPES", "bf16,fp16").split(","))
        dims = tuple(int(d) for d in env.get("SAS_KERNEL_HEAD_DIMS", "64,128").split(","))
        unknown = [d for d in dtypes if d not in _DTYPES] + [
            str(d) for d in dims if d not in _HEAD_DIMS
        ]
        if unknown or not dtypes or not dims:
            raise ValueError(f"unsupported kernel build matrix entries: {unknown or 'empty'}")
        trace = env.get("SAS_KERNEL_TRACE", "0")
        if trace not in ("0", "1"):
            raise ValueError(f"SAS_KERNEL_TRACE must be 0 or 1, got {trace!r}")
        return cls(dtypes=dtypes, head_dims=dims, trace=trace == "1")

    def defines(self) -> list[str]:
        """-D flags that tell the op's dispatcher which instantiations are absent, and turn
        the trace on."""
        off = [f"-DSAS_DISABLE_{d.upper()}" for d in _DTYPES if d not in self.dtypes]
        off += [f"-DSAS_DISABLE_HDIM{d}" for d in _HEAD_DIMS if d not in self.head_dims]
        return off + (["-DSAS_KERNEL_TRACE"] if self.trace else [])


def default_build_dir() -> Path:
    """Where the JIT build and its generated sources live (XDG cache, outside the clone)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "sparse-attention-operator" / "kernels"


def cutlass_include_dir() -> Path:
    """CUTLASS/CuTe headers: $SAS_CUTLASS_INCLUDE or the nvidia-cutlass wheel's copy."""
    configured = os.environ.get("SAS_CUTLASS_INCLUDE")
    if configured:
        return Path(configured)
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("CUTLASS headers not found: set SAS_CUTLASS_INCLUDE")
    return Path(next(iter(spec.submodule_search_locations))) / "source" / "include"


def _wheel_cuda_dir() -> Path | None:
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "cu13"
        if (candidate / "bin" / "nvcc").exists():
            return candidate
    return None


def cuda_home(cache_dir: Path) -> Path:
    """A CUDA toolkit root torch's builder accepts: $CUDA_HOME, /usr/local/cuda, or a shim over
    the cuda-toolkit wheel made under `cache_dir`."""
    configured = os.environ.get("CUDA_HOME")
    if configured:
        return Path(configured)
    system = Path("/usr/local/cuda")
    if (system / "bin" / "nvcc").exists():
        return system
    wheel = _wheel_cuda_dir()
    if wheel is None:
        raise FileNotFoundError("no CUDA toolkit: set CUDA_HOME or install cuda-toolkit[nvcc]")
    shim = cache_dir / "cuda-home"
    lib64 = shim / "lib64"
    lib64.mkdir(parents=True, exist_ok=True)
    for name in ("bin", "include", "nvvm"):
        link = shim / name
        if not link.exists():
            link.symlink_to(wheel / name)
    for library in (wheel / "lib").iterdir():
        link = lib64 / library.name
        if not link.exists():
            link.symlink_to(library)
    unversioned = lib64 / "libcudart.so"
    if not unversioned.exists():
        unversioned.symlink_to(wheel / "lib" / "libcudart.so.13")
    return shim


def check_op_namespace(op_namespace: str) -> str:
    """`sas`, or a variant's `sas_<lowercase letters, digits, _>` (a prefix no header uses)."""
    if op_namespace != OP_NAMESPACE and not _VARIANT_NAMESPACE.fullmatch(op_namespace):
        raise ValueError(
            f"op namespace {op_namespace!r}: use sas, or sas_ followed by lowercase letters, "
            "digits and underscores"
        )
    return op_namespace


def namespace_defines(op_namespace: str) -> list[str]:
    """-D flags that rename the C++ and op namespace `sas` (none for `sas` itself)."""
    check_op_namespace(op_namespace)
    return [] if op_namespace == OP_NAMESPACE else [f"-Dsas={op_namespace}"]


def library_name(op_namespace: str) -> str:
    """`sas_kernels`, or `sas_kernels_<namespace>` for a variant."""
    check_op_namespace(op_namespace)
    return LIBRARY_NAME if op_namespace == OP_NAMESPACE else f"{LIBRARY_NAME}_{op_namespace}"


def nvcc_flags(matrix: BuildMatrix, op_namespace: str = OP_NAMESPACE) -> list[str]:
    """nvcc flags of every kernel translation unit (sm_90a only)."""
    return [
        "-O3",
        "-std=c++17",
        SM90_GENCODE,
        "--use_fast_math",
        "--expt-relaxed-constexpr",
        "-lineinfo",
        "-DNDEBUG",
        *matrix.defines(),
        *namespace_defines(op_namespace),
    ]


def write_instantiations(matrix: BuildMatrix, out_dir: Path) -> list[Path]:
    """Writes one `fwd_<dtype>_hdim<D>_sm90.cu` per matrix entry; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for dtype in matrix.dtypes:
        for head_dim in matrix.head_dims:
            path = out_dir / f"fwd_{dtype}_hdim{head_dim}_sm90.cu"
            text = (
                "// Generated by sas_runtime.kernels.build: do not edit.\n"
                '#include "block_sparse_fwd.h"\n'
                f"SAS_INSTANTIATE_BLOCK_SPARSE_FWD(sas::DType::{_DTYPES[dtype]}, {head_dim})\n"
            )
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
            paths.append(path)
    return paths


def build_extension(
    build_dir: Path,
    matrix: BuildMatrix,
    *,
    op_namespace: str = OP_NAMESPACE,
    verbose: bool = False,
) -> Path:
    """Compiles and links the extension into `build_dir`; returns the library's path.

    Runs torch's builder in this process: CUDA_HOME and TORCH_CUDA_ARCH_LIST must be set in the
    environment before torch.utils.cpp_extension is first imported (`main` does that).
    """
    from torch.utils.cpp_extension import load

    generated = write_instantiations(matrix, build_dir / "generated")
    include = [str(CSRC_DIR), str(cutlass_include_dir())]
    name = library_name(op_namespace)
    load(
        name=name,
        sources=[str(CSRC_DIR / "block_sparse_attention.cpp"), *map(str, generated)],
        extra_include_paths=include,
        extra_cflags=[
            "-O3",
            "-std=c++17",
            *matrix.defines(),
            *namespace_defines(op_namespace),
        ],
        extra_cuda_cflags=nvcc_flags(matrix, op_namespace),
        extra_ldflags=list(LINK_FLAGS),
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=verbose,
    )
    library = build_dir / f"{name}.so"
    check_links_shared_libstdcxx(library)
    return library


def defined_symbols(library: Path, *, demangle: bool = False) -> str | None:
    """`nm -D --defined-only` of a shared library (demangled if asked): the dynamic symbols it
    defines, one per line; None without binutils' `nm` (g++ brings it)."""
    nm = shutil.which("nm")
    if nm is None:
        return None
    flags = "-DC" if demangle else "-D"
    return subprocess.run(
        [nm, flags, "--defined-only", str(library)], capture_output=True, text=True, check=True
    ).stdout


def check_links_shared_libstdcxx(library: Path) -> None:
    """Raises if the library defines libstdc++'s own std::locale or ios_base (a static copy;
    see LINK_FLAGS). Without `nm`, checks nothing."""
    symbols = defined_symbols(library)
    if symbols is None:
        return
    found = _OWN_LIBSTDCXX.search(symbols)
    if found is not None:
        raise RuntimeError(
            f"{library} carries its own copy of libstdc++ ({found.group(1)}...): link it against "
            "libstdc++.so.6, or install the toolchain's libstdc++ development package"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_build_dir(), help="build directory")
    parser.add_argument(
        "--op-namespace",
        default=OP_NAMESPACE,
        help="sas, or sas_NAME for a variant that loads beside the runtime's library",
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        check_op_namespace(args.op_namespace)
    except ValueError as error:
        parser.error(str(error))
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if "torch.utils.cpp_extension" not in sys.modules:
        os.environ["CUDA_HOME"] = str(cuda_home(out))
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0a")
        os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    library = build_extension(
        out, BuildMatrix.from_env(os.environ), op_namespace=args.op_namespace, verbose=args.verbose
    )
    print(library)
    return 0


def run_build_subprocess(
    out: Path, env: dict[str, str] | None = None, op_namespace: str = OP_NAMESPACE
) -> Path:
    """Builds in a fresh interpreter (so the environment knobs apply); returns the library."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sas_runtime.kernels.build",
            "--out",
            str(out),
            "--op-namespace",
            op_namespace,
        ],
        env={**os.environ, **(env or {})},
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    raise SystemExit(main())
