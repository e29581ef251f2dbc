"""The kernel build: generated instantiations, env knobs, and a real nvcc compile for sm_90a.

The compile test builds the extension with the cuda-toolkit wheel's nvcc (the same compiler
build as the GPU machine's), so a kernel that does not compile cannot land. It builds one
instantiation (bf16, head dim 64) to keep CI short; $SAS_KERNEL_DTYPES and
$SAS_KERNEL_HEAD_DIMS widen it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from sas_runtime.kernels import build, ops


def test_matrix_from_env_defaults_to_everything_we_ship() -> None:
    matrix = build.BuildMatrix.from_env({})
    assert matrix.dtypes == ("bf16", "fp16")
    assert matrix.head_dims == (64, 128)
    assert matrix.defines() == []


def test_trimmed_matrix_tells_the_dispatcher_what_is_missing() -> None:
    matrix = build.BuildMatrix.from_env(
        {"SAS_KERNEL_DTYPES": "bf16", "SAS_KERNEL_HEAD_DIMS": "128"}
    )
    assert matrix.defines() == ["-DSAS_DISABLE_FP16", "-DSAS_DISABLE_HDIM64"]


def test_trace_build_defines_the_trace_and_only_when_asked() -> None:
    traced = build.BuildMatrix.from_env({"SAS_KERNEL_TRACE": "1", "SAS_KERNEL_HEAD_DIMS": "64"})
    assert traced.defines() == ["-DSAS_DISABLE_HDIM128", "-DSAS_KERNEL_TRACE"]
    assert "-DSAS_KERNEL_TRACE" in build.nvcc_flags(traced)
    assert not build.BuildMatrix.from_env({"SAS_KERNEL_TRACE": "0"}).trace
    with pytest.raises(ValueError, match="SAS_KERNEL_TRACE must be 0 or 1"):
        build.BuildMatrix.from_env({"SAS_KERNEL_TRACE": "yes"})


@pytest.mark.parametrize("env", [{"SAS_KERNEL_DTYPES": "fp8"}, {"SAS_KERNEL_HEAD_DIMS": "96"}])
def test_unknown_matrix_entries_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        build.BuildMatrix.from_env(env)


def test_instantiations_are_generated_one_per_entry(tmp_path: Path) -> None:
    paths = build.write_instantiations(build.BuildMatrix(), tmp_path)
    assert sorted(p.name for p in paths) == [
        "fwd_bf16_hdim128_sm90.cu",
        "fwd_bf16_hdim64_sm90.cu",
        "fwd_fp16_hdim128_sm90.cu",
        "fwd_fp16_hdim64_sm90.cu",
    ]
    text = (tmp_path / "fwd_fp16_hdim64_sm90.cu").read_text()
    assert "SAS_INSTANTIATE_BLOCK_SPARSE_FWD(sas::DType::kFloat16, 64)" in text


def test_nvcc_flags_target_sm90a_only() -> None:
    flags = build.nvcc_flags(build.BuildMatrix())
    assert "-gencode=arch=compute_90a,code=sm_90a" in flags
    assert not any("sm_80" in f or "compute_80" in f for f in flags)


def _build(tmp_path_factory: pytest.TempPathFactory, op_namespace: str) -> Path:
    if build._wheel_cuda_dir() is None and "CUDA_HOME" not in os.environ:
        pytest.skip("no CUDA toolkit (install the kernels-build extra)")
    out = tmp_path_factory.mktemp("kernels")
    env = {
        "SAS_KERNEL_DTYPES": os.environ.get("SAS_KERNEL_DTYPES", "bf16"),
        "SAS_KERNEL_HEAD_DIMS": os.environ.get("SAS_KERNEL_HEAD_DIMS", "64"),
        "XDG_CACHE_HOME": str(out),
    }
    return build.run_build_subprocess(out, env, op_namespace)


@pytest.fixture(scope="module")
def built_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory, "sas")


def test_extension_compiles_for_sm90a_and_loads_without_a_gpu(built_library: Path) -> None:
    assert built_library.is_file()
    assert ops.load_library(built_library) is None
    schema = str(torch.ops.sas.block_sparse_attention_fwd.default._schema)
    assert schema.startswith("sas::block_sparse_attention_fwd(Tensor q, Tensor k, Tensor v,")
    assert schema.endswith("-> (Tensor out, Tensor lse)")


def test_variant_namespaces_are_sas_prefixed_and_rename_the_library() -> None:
    assert build.namespace_defines("sas") == []
    assert build.namespace_defines("sas_v16e") == ["-Dsas=sas_v16e"]
    assert build.library_name("sas") == "sas_kernels"
    assert build.library_name("sas_v16e") == "sas_kernels_sas_v16e"
    assert "-Dsas=sas_v16e" in build.nvcc_flags(build.BuildMatrix(), "sas_v16e")
    for bad in ("cute", "sas_", "sas_V2", "sas-v2", "torch", ""):
        with pytest.raises(ValueError, match="op namespace"):
            build.check_op_namespace(bad)


def test_a_variant_build_loads_beside_the_runtimes_library_and_shares_no_symbol(
    built_library: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    variant = _build(tmp_path_factory, "sas_variant")
    assert variant.name == "sas_kernels_sas_variant.so"
    assert ops.load_library(built_library) is None
    torch.ops.load_library(str(variant))  # type: ignore[no-untyped-call]
    ours = str(torch.ops.sas.block_sparse_attention_fwd.default._schema)
    theirs = str(torch.ops.sas_variant.block_sparse_attention_fwd.default._schema)
    assert theirs == ours.replace("sas::", "sas_variant::", 1)
    symbols = build.defined_symbols(variant, demangle=True)
    if symbols is None:
        return
    # The weak template symbols (TileTraits' TMA makers) would otherwise be the same names in
    # both libraries, and the dynamic linker could bind one library's calls to the other's.
    assert "sas_variant::run_block_sparse_fwd" in symbols
    assert re.search(r"\bsas::", symbols) is None


def test_the_extension_uses_the_shared_libstdcxx(built_library: Path) -> None:
    """A refusal's message is formatted by the process's one libstdc++, not a copy inside the
    library (build.LINK_FLAGS)."""
    build.check_links_shared_libstdcxx(built_library)


@pytest.mark.skipif(shutil.which("g++") is None or shutil.which("nm") is None, reason="no g++")
def test_a_library_with_its_own_libstdcxx_is_refused(tmp_path: Path) -> None:
    """What a toolchain with only libstdc++.a makes of a library that formats a number."""
    source = tmp_path / "formats.cpp"
    source.write_text(
        "#include <sstream>\n#include <string>\n"
        "std::string formats(long n) { std::ostringstream s; s << n; return s.str(); }\n"
    )
    library = tmp_path / "libformats.so"
    subprocess.run(
        ["g++", "-shared", "-fPIC", "-static-libstdc++", str(source), "-o", str(library)],
        check=True,
    )
    with pytest.raises(RuntimeError, match="its own copy of libstdc\\+\\+"):
        build.check_links_shared_libstdcxx(library)
    # torch's builder puts the link flags after the objects, as here.
    subprocess.run(
        [
            "g++",
            "-shared",
            "-fPIC",
            str(source),
            *build.LINK_FLAGS,
            "-static-libstdc++",
            "-o",
            str(library),
        ],
        check=True,
    )
    build.check_links_shared_libstdcxx(library)


def test_fake_kernel_gives_output_shapes(built_library: Path) -> None:
    assert ops.load_library(built_library) is None
    with FakeTensorMode():
        q = torch.empty(2, 8, 300, 64, dtype=torch.bfloat16)
        k = torch.empty(2, 2, 500, 64, dtype=torch.bfloat16)
        counts = torch.empty(1, 1, 3, dtype=torch.int32)
        indices = torch.empty(1, 1, 3, 4, dtype=torch.int32)
        out, lse = torch.ops.sas.block_sparse_attention_fwd(
            q, k, k, counts, indices, counts, indices, None, None, 0.125, False, -1, 0
        )
    assert out.shape == (2, 8, 300, 64)
    assert out.dtype == torch.bfloat16
    assert lse.shape == (2, 8, 300)
    assert lse.dtype == torch.float32


def _call_fake(dtype: torch.dtype, *, window: int = -1, global_tokens: int = 0) -> None:
    """The op on one [1, 2, 128, 64] tensor as q, k and v with a one-block mask, under the fake
    kernel."""
    with FakeTensorMode():
        q = torch.empty(1, 2, 128, 64, dtype=dtype)
        counts = torch.empty(1, 1, 1, dtype=torch.int32)
        indices = torch.empty(1, 1, 1, 1, dtype=torch.int32)
        torch.ops.sas.block_sparse_attention_fwd(
            q,
            q,
            q,
            counts,
            indices,
            counts,
            indices,
            None,
            None,
            0.125,
            False,
            window,
            global_tokens,
        )


def test_fake_kernel_refuses_float32(built_library: Path) -> None:
    assert ops.load_library(built_library) is None
    with pytest.raises(RuntimeError, match="bf16 or fp16"):
        _call_fake(torch.float32)


@pytest.mark.parametrize(
    ("window", "global_tokens", "message"),
    [(-2, 0, "window must be"), (2**31, 0, "window must be"), (-1, 2**31, "global_tokens must be")],
)
def test_fake_kernel_refuses_rules_past_int32(
    built_library: Path, window: int, global_tokens: int, message: str
) -> None:
    """The kernel holds positions in 32-bit ints; a wider rule would wrap, not widen."""
    assert ops.load_library(built_library) is None
    with pytest.raises(RuntimeError, match=message):
        _call_fake(torch.bfloat16, window=window, global_tokens=global_tokens)


def test_fake_kernel_checks_the_tile_order(built_library: Path) -> None:
    assert ops.load_library(built_library) is None
    with FakeTensorMode():
        q = torch.empty(1, 2, 300, 64, dtype=torch.bfloat16)
        counts = torch.empty(1, 1, 3, dtype=torch.int32)
        indices = torch.empty(1, 1, 3, 3, dtype=torch.int32)
        args = (q, q, q, counts, indices, counts, indices, None, None, 0.125, False, -1, 0)
        out, _ = torch.ops.sas.block_sparse_attention_fwd(*args, torch.empty(6, dtype=torch.int32))
        assert out.shape == q.shape
        carried, _ = torch.ops.sas.block_sparse_attention_fwd(*args, None, True)
        assert carried.shape == q.shape
        with pytest.raises(RuntimeError, match="one entry per tile"):
            torch.ops.sas.block_sparse_attention_fwd(*args, torch.empty(5, dtype=torch.int32))
        with pytest.raises(RuntimeError, match="tile_order must be int32"):
            torch.ops.sas.block_sparse_attention_fwd(*args, torch.empty(6, dtype=torch.int64))


def _cuobjdump() -> Path | None:
    """cuobjdump from Triton's wheel (torch's dependency); the cuda-toolkit wheel has none."""
    spec = importlib.util.find_spec("triton")
    if spec is None or spec.origin is None:
        return None
    tool = Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return tool if tool.is_file() else None


def _opcodes(sass: str) -> list[str]:
    """The opcodes (with operands) of cuobjdump's SASS, in address order."""
    return [
        line.split("*/", 1)[1].split(";", 1)[0].strip()
        for line in sass.splitlines()
        if line.lstrip().startswith("/*") and "*/" in line
    ]


def _exponentials_before_product_waits(sass: str) -> list[int]:
    """For each wait for S (`WARPGROUP.DEPBAR.LE gsb0, 0x1`: one in the block loop, one more in
    block 0 where the previous tile's last product runs beside S_0), how many exponentials are
    issued before the next wait for P V (`... gsb0, 0x0`)."""
    opcodes = _opcodes(sass)
    counts = []
    for index, opcode in enumerate(opcodes):
        if opcode == "WARPGROUP.DEPBAR.LE gsb0, 0x1":
            product_wait = opcodes.index("WARPGROUP.DEPBAR.LE gsb0, 0x0", index)
            counts.append(sum(op.startswith("MUFU.EX2") for op in opcodes[index:product_wait]))
    return counts


def _exponentials_under_a_second_score(sass: str) -> list[int]:
    """For each wait for S_0 while S_1 is in flight (two Q K^T groups, the `HGMMA ... gsb0`
    that closes each without `.tnspB`, with no wait between them, then `WARPGROUP.DEPBAR.LE
    gsb0, 0x1`), how many exponentials are issued before the next wait."""
    events = []
    for opcode in _opcodes(sass):
        if opcode.startswith("HGMMA") and "gsb0" in opcode:
            events.append("PV" if ".tnspB" in opcode else "QK")
        elif opcode.startswith("WARPGROUP.DEPBAR"):
            events.append("wait for one" if opcode.endswith("0x1") else "wait")
        elif opcode.startswith("MUFU.EX2"):
            events.append("exp")
    counts = []
    for index in range(len(events) - 2):
        if events[index : index + 3] == ["QK", "QK", "wait for one"]:
            following = events[index + 3 :]
            end = next((i for i, e in enumerate(following) if e.startswith("wait")), None)
            counts.append(following[:end].count("exp"))
    return counts


def _kernel_sass(sass: str) -> dict[str, str]:
    """cuobjdump's SASS of one object, split by kernel (mangled name -> its instructions)."""
    kernels: dict[str, str] = {}
    for section in sass.split("Function : ")[1:]:
        name, _, body = section.partition("\n")
        kernels[name.split()[0]] = body
    return kernels


def _kernels_of_each_object(built_library: Path) -> dict[str, dict[str, str]]:
    """Each kernel object beside the library (its file name) -> its kernels' SASS; the two
    schedules of one (dtype, head dim) are in one object."""
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (Triton's wheel carries one)")
    objects = sorted(built_library.parent.glob("fwd_*_sm90.cuda.o"))
    assert objects, f"no kernel objects beside {built_library}"
    kernels = {}
    for obj in objects:
        sass = subprocess.run(
            [str(tool), "-sass", str(obj)], capture_output=True, text=True, check=True
        ).stdout
        kernels[obj.name] = _kernel_sass(sass)
        assert len(kernels[obj.name]) == 2, f"{obj.name}: kernels {list(kernels[obj.name])}"
    return kernels


def _schedule(kernels: dict[str, str], carried: bool) -> str:
    """The SASS of the kernel with the given schedule (template argument `Lb1E` carries each
    tile's last product, `Lb0E` is the plain kernel)."""
    bodies = [body for name, body in kernels.items() if f"ELb{int(carried)}E" in name]
    assert len(bodies) == 1, f"kernels {list(kernels)}"
    return bodies[0]


def test_carried_kernel_runs_the_softmax_while_the_product_is_in_flight(
    built_library: Path,
) -> None:
    """FlashAttention 3's overlap within a warpgroup, checked in the compiled SASS of the kernel
    that carries each tile's last product: in block 0 and in the block loop, the softmax (its
    64 exponentials per thread) runs before the wait for the P V product beside it, so the
    tensor cores work on the product meanwhile. The plain kernel is left to ptxas, which
    hoists that wait (measured faster there in run 9)."""
    for name, kernels in _kernels_of_each_object(built_library).items():
        counts = _exponentials_before_product_waits(_schedule(kernels, carried=True))
        assert len(counts) == 2, f"{name}: waits for S with a product in flight: {counts}"
        assert min(counts) >= 64, f"{name}: exponentials before each product wait: {counts}"


def test_plain_kernel_runs_the_first_softmax_while_the_second_score_is_in_flight(
    built_library: Path,
) -> None:
    """The plain kernel starts a tile of two or more blocks with S_0 and S_1 issued together
    and S_0's softmax (64 exponentials per thread) before any further wait, so the tensor
    cores compute S_1 meanwhile (v22, run 11: 1.5-1.8% faster at D128)."""
    for name, kernels in _kernels_of_each_object(built_library).items():
        counts = _exponentials_under_a_second_score(_schedule(kernels, carried=False))
        assert len(counts) == 1, f"{name}: waits for S_0 with S_1 in flight: {counts}"
        assert counts[0] >= 64, f"{name}: exponentials before the next wait: {counts}"
