"""What one more graph node costs a replayed call of ours: the tile counter's memset.

    python -m bench.graph_node_cost --seq-lens 4096 --head-dims 128,64 \\
        --masks random-0.25,window-1024,global-window --out bench/results/node-cost.json

Each call of the op is two nodes in a CUDA graph: a 4-byte `cudaMemsetAsync` that zeroes the
kernel's tile counter, then the kernel. For each bench.kernel row this times, under the
sustained graph load bench.kernel uses (`time_sustained_graphs_ms`, sides rotated), ours as it
is, ours with one more such memset before each call (on a scratch int32, so the output is
unchanged), and the memsets alone. The difference between the first two stands in for what the
op's own memset node costs each call (the extra one sits beside a memset, not a kernel, so the
two may differ); printed in microseconds and as a fraction of ours: the most a counter the
kernel resets itself could give back.
"""

from __future__ import annotations

import argparse
import ctypes
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from bench.kernel import (
    add_kernel_arguments,
    add_row_arguments,
    format_number,
    load_kernel,
    problems,
    time_sustained_graphs_ms,
    write_result,
)
from sas_runtime.kernels import ops

SIDES = ("ours", "ours+memset", "memset")


def cuda_runtime() -> ctypes.CDLL:
    """The CUDA runtime torch has loaded (dlopen by soname finds its copy, so a memset issued
    here joins torch's stream capture)."""
    major = torch.version.cuda.split(".")[0] if torch.version.cuda else "12"
    return ctypes.CDLL(f"libcudart.so.{major}")


def memset_call(runtime: ctypes.CDLL, scratch: torch.Tensor) -> Callable[[], None]:
    """One 4-byte cudaMemsetAsync of `scratch` on the current stream, as the op issues it."""
    memset = runtime.cudaMemsetAsync
    memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p]
    memset.restype = ctypes.c_int

    def call() -> None:
        status = memset(scratch.data_ptr(), 0, 4, torch.cuda.current_stream().cuda_stream)
        if status != 0:
            raise RuntimeError(f"cudaMemsetAsync failed with CUDA error {status}")

    return call


def node_cost(times_ms: dict[str, float | None]) -> dict[str, float | None]:
    """The extra memset's cost per call (us) and its share of ours, from the sides' medians."""
    ours, both, alone = (times_ms.get(side) for side in SIDES)
    if ours is None or both is None:
        return {"node_us": None, "node_share": None, "memset_alone_us": None}
    node_ms = both - ours
    return {
        "node_us": node_ms * 1e3,
        "node_share": node_ms / ours,
        "memset_alone_us": None if alone is None else alone * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_row_arguments(
        parser,
        seq_lens="4096",
        head_dims="128,64",
        masks="random-0.25,random-0.1,window-1024,global-window",
    )
    add_kernel_arguments(parser)
    args = parser.parse_args(argv)
    if not load_kernel(args.library):
        return 1
    runtime = cuda_runtime()
    scratch = torch.zeros(1, dtype=torch.int32, device="cuda")
    memset = memset_call(runtime, scratch)
    rows: list[dict[str, Any]] = []
    for problem in problems(args.seq_lens, args.head_dims, args.heads, args.masks):
        ours = partial(
            ops.block_sparse_attention, problem.q, problem.k, problem.v, block_mask=problem.mask
        )
        ours()  # the eager call that caches the mask's tile order, as bench.kernel's warm-up

        def ours_after_memset(ours: Callable[[], object] = ours) -> None:
            memset()
            ours()

        sides: dict[str, Callable[[], object]] = {
            "ours": ours,
            "ours+memset": ours_after_memset,
            "memset": memset,
        }
        times = time_sustained_graphs_ms(sides, passes=len(SIDES), rotate=True)
        row = {**problem.row(), "graph_ms": times, **node_cost(times)}
        rows.append(row)
        print(
            f"{problem.label()} ours {format_number(times['ours'], '.4f')} ms, +memset "
            f"{format_number(times['ours+memset'], '.4f')} ms: one more node "
            f"{format_number(row['node_us'], '+.2f')} us "
            f"({format_number(row['node_share'], '+.2%')}), memset alone "
            f"{format_number(row['memset_alone_us'], '.2f')} us",
            flush=True,
        )
    write_result(args.out, rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
