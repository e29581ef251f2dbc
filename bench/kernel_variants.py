"""Our kernel and variants of it side by side in one process: each variant is built from its
patched tree with `python -m sas_runtime.kernels.build --op-namespace sas_NAME` (its own op
and C++ namespace, so it loads beside the base library and shares no symbol with it), checked
against base's output on every row, and timed on bench.kernel's rows from CUDA graphs under a
sustained load beside base and cuDNN dense (bench.kernel.time_sustained_graphs_ms), every side
in every place of the order once. Prints each variant's time over base per row and their
geometric mean over the rows.

    python -m bench.kernel_variants --library BASE/sas_kernels.so \\
        --variant TREE/build/sas_kernels_sas_v22.so [--variant ...] \\
        --seq-lens 4096,16384,32768 --head-dims 128 --masks random-1.0,causal --out R.json

Every side gets base's op arguments (`ops.op_arguments`): a patch that changes the op's schema
or what the wrapper passes needs `bench/kernel_ab.sh`, which runs each side in its own tree.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bench.kernel import (
    MASK_NAMES,
    add_kernel_arguments,
    cudnn_attention,
    format_number,
    load_kernel,
    problems,
    time_ratio,
    time_sustained_graphs_ms,
    write_result,
)
from sas_runtime.kernels import ops

VARIANT_LIBRARY = re.compile(r"sas_kernels_(?P<namespace>sas_[a-z0-9_]+)\.so")
# A variant whose output differs from base's by more than this on a row is not timed there:
# the same math in another order moves bf16 outputs by a few ulps (0.0078 at 1.0), not more.
MAX_OUTPUT_DIFFERENCE = 0.05


def variant_namespace(library: Path) -> str:
    """The op namespace of a variant library, read from its file name."""
    match = VARIANT_LIBRARY.fullmatch(library.name)
    if match is None:
        raise ValueError(
            f"{library.name}: not a variant library (sas_kernels_sas_NAME.so, built with "
            "--op-namespace sas_NAME)"
        )
    return match["namespace"]


def load_base_and_variants(
    parser: argparse.ArgumentParser, library: Path | None, variants: list[Path]
) -> dict[str, Path] | None:
    """Loads base (`library`) and each variant library; returns the variants by op namespace,
    or None if base cannot load. A variant not built under a namespace of its own is a usage
    error, reported before anything loads."""
    try:
        namespaces = {variant_namespace(path): path for path in variants}
    except ValueError as error:
        parser.error(str(error))
    if not load_kernel(library):
        return None
    for path in namespaces.values():
        torch.ops.load_library(str(path))  # type: ignore[no-untyped-call]
    return namespaces


def summarise(rows: list[dict[str, Any]], variants: list[str]) -> dict[str, float | None]:
    """Each variant's geometric mean of time over base, over the rows where both were timed."""
    summary: dict[str, float | None] = {}
    for name in variants:
        ratios = [
            row["variants"][name]["over_base"]
            for row in rows
            if row["variants"][name]["over_base"] is not None
        ]
        summary[name] = statistics.geometric_mean(ratios) if ratios else None
    return summary


def _difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max absolute difference; inf where the two disagree on an inf or NaN (a NaN never
    agrees)."""
    special = ~torch.isfinite(a) | ~torch.isfinite(b)
    if special.any() and not torch.equal(a[special], b[special]):
        return math.inf
    finite = ~special
    return float((a[finite].float() - b[finite].float()).abs().max()) if finite.any() else 0.0


def bench_row(
    calls: dict[str, Callable[[], Any]],
    cudnn_dense: Callable[[], object],
) -> tuple[dict[str, float | None], dict[str, tuple[float, float]]]:
    """Times base, the variants that agree with it, and cuDNN dense; returns the times and each
    variant's (output, LSE) max difference from base."""
    out, lse = calls["base"]()
    differences = {}
    timed: dict[str, Callable[[], object]] = {"base": calls["base"]}
    for name, call in calls.items():
        if name == "base":
            continue
        their_out, their_lse = call()
        differences[name] = (_difference(out, their_out), _difference(lse, their_lse))
        if differences[name][0] <= MAX_OUTPUT_DIFFERENCE:
            timed[name] = call
    sides = {**timed, "cudnn_dense": cudnn_dense}
    times = time_sustained_graphs_ms(sides, passes=len(sides), rotate=True)
    return {name: times.get(name) for name in (*calls, "cudnn_dense")}, differences


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", type=Path, action="append", required=True)
    parser.add_argument("--seq-lens", default="4096,16384,32768")
    parser.add_argument("--head-dims", default="128")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--masks", default=",".join(MASK_NAMES))
    add_kernel_arguments(parser)
    args = parser.parse_args(argv)
    namespaces = load_base_and_variants(parser, args.library, args.variant)
    if namespaces is None:
        return 1

    rows: list[dict[str, Any]] = []
    for problem in problems(args.seq_lens, args.head_dims, args.heads, args.masks):
        q, k, v = problem.q, problem.k, problem.v
        arguments = ops.op_arguments(q, k, v, block_mask=problem.mask)
        calls: dict[str, Callable[[], Any]] = {
            "base": partial(torch.ops.sas.block_sparse_attention_fwd, *arguments),
            **{
                namespace: partial(
                    getattr(torch.ops, namespace).block_sparse_attention_fwd, *arguments
                )
                for namespace in namespaces
            },
        }
        times, differences = bench_row(calls, partial(cudnn_attention, q, k, v, causal=False))
        base = times["base"]
        row: dict[str, Any] = {
            **problem.row(),
            "base_graph_ms": base,
            "cudnn_dense_graph_ms": times["cudnn_dense"],
            "variants": {
                namespace: _variant_entry(times[namespace], base, differences[namespace])
                for namespace in namespaces
            },
        }
        rows.append(row)
        ratios = " | ".join(
            f"{namespace} {_ratio(row['variants'][namespace])}" for namespace in namespaces
        )
        print(
            f"{problem.label()} base {format_number(base, '8.3f')} ms | {ratios}",
            flush=True,
        )
        write_result(  # after every row: a call cut short keeps its rows
            args.out,
            variants={namespace: str(path) for namespace, path in namespaces.items()},
            rows=rows,
            geometric_mean_over_base=summarise(rows, list(namespaces)),
        )
    summary = summarise(rows, list(namespaces))
    print(
        "geometric mean over base: "
        + " | ".join(f"{n} {format_number(g, '.3f')}" for n, g in summary.items())
    )
    return 0


def _variant_entry(
    time: float | None, base: float | None, difference: tuple[float, float]
) -> dict[str, float | None]:
    return {
        "graph_ms": time,
        "over_base": time_ratio(time, base),
        "max_output_difference": difference[0],
        "max_lse_difference": difference[1],
    }


def _ratio(variant: dict[str, Any]) -> str:
    if variant["over_base"] is None:
        return f"not timed (output differs by {variant['max_output_difference']:.3g})"
    return f"{variant['over_base']:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
