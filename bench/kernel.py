"""Benchmark of the block-sparse kernel against cuDNN SDPA, SDPA flash and FlexAttention.

Run on the H100: `python -m bench.kernel --out bench/results/kernel-<date>.json`. For every
(sequence length, head dim) it times cuDNN and flash SDPA on the dense problem (and causal),
then, per mask, our kernel and FlexAttention (compiled, same block mask). TFLOPS count the
blocks computed (4 * 128 * 128 * D flops per visited block pair); ratios compare times. Our
kernel, cuDNN and FlexAttention are also timed from CUDA-graph replays under a sustained load,
row by row (`*_graph_ms`): device time without the host's per-call launch cost, which dominates
the shortest cases when called eagerly, each side at its own clock under the card's power cap.
The issue's targets are read from those. `speedup_vs_flex` compares the eager times,
`graph_speedup_vs_flex` the replays.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import shlex
import statistics
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional
from torch.nn.attention import SDPBackend, flex_attention, sdpa_kernel

from bench.gpu_info import gpu_and_driver
from sas_runtime.block_mask import BlockMask, ElementMask, compile_block_mask
from sas_runtime.config import PatternConfig, PatternType
from sas_runtime.kernels import ops

BLOCK = 128
DENSITIES = (1.0, 0.5, 0.25, 0.1, 0.05)
MASK_NAMES = (*(f"random-{d}" for d in DENSITIES), "window-1024", "global-window", "causal")


def event_ms(work: Callable[[], object]) -> float:
    """Device time of what `work` enqueues, between two CUDA events, waited for."""
    start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    start.record()
    work()
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end))


def single_call_ms(fn: Callable[[], object], samples: int) -> list[float]:
    """Each call timed alone between two events and synchronised after: the eager way, whose
    figure includes whatever the host spends before the launch."""
    return [event_ms(fn) for _ in range(samples)]


def queued_ms(fn: Callable[[], object], calls: int) -> float:
    """Mean time of `calls` calls queued back to back between one pair of events."""

    def queue() -> None:
        for _ in range(calls):
            fn()

    return event_ms(queue) / calls


def time_ms(fn: Callable[[], object], *, warmup: int = 3, repeats: int = 10) -> float:
    """Median device time of `fn` in milliseconds over single calls (`single_call_ms`)."""
    for _ in range(warmup):
        fn()
    return statistics.median(single_call_ms(fn, repeats))


def add_row_arguments(
    parser: argparse.ArgumentParser, *, seq_lens: str, masks: str, head_dims: str | None = None
) -> None:
    """--seq-lens, --head-dims (where the tool takes more than one), --heads and --masks: which
    of bench.kernel's rows a tool runs, comma-separated as `problems` takes them."""
    parser.add_argument("--seq-lens", default=seq_lens)
    if head_dims is not None:
        parser.add_argument("--head-dims", default=head_dims)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--masks", default=masks)


def add_kernel_arguments(parser: argparse.ArgumentParser) -> None:
    """--library (the compiled extension to load) and --out (the result JSON)."""
    parser.add_argument("--library", type=Path, default=None, help="compiled extension")
    parser.add_argument("--out", type=Path, default=None, help="result JSON")


def write_result(out: Path | None, **fields: object) -> None:
    """Writes a result JSON, this run's environment first (device, driver, versions, date,
    command); nothing without --out."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"environment": this_run_environment(), **fields}
    out.write_text(json.dumps(result, indent=1))


def format_ms(value: float | None) -> str:
    """A time for a printed row: '-' where there is none."""
    return "-" if value is None else f"{value:8.3f} ms"


def load_kernel(library: Path | None) -> bool:
    """Loads the extension (the given one, or the default build); says why not if it cannot
    run here."""
    reason = ops.load_library(library) or ops.unavailable_reason()
    if reason is not None:
        print(f"cannot run the kernel: {reason}", file=sys.stderr)
    return reason is None


def capture_graph(fn: Callable[[], object], calls: int) -> torch.cuda.CUDAGraph | None:
    """A CUDA graph of `calls` calls of `fn` (warmed on a side stream first); None if `fn`
    cannot be captured."""
    side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    side.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
    except RuntimeError as error:
        print(f"graph capture failed: {error}", file=sys.stderr)
        return None
    graph.replay()
    return graph


def time_graph_ms(fn: Callable[[], object], *, calls: int = 10, repeats: int = 5) -> float | None:
    """Median device time of one call of `fn`, replayed from a CUDA graph of `calls` calls, so
    the host's launch cost is left out; None if `fn` cannot be captured."""
    graph = capture_graph(fn, calls)
    if graph is None:
        return None
    times = sorted(event_ms(graph.replay) / calls for _ in range(repeats))
    return times[len(times) // 2]


def sized_graph(
    fn: Callable[[], object], replay_ms: float
) -> tuple[torch.cuda.CUDAGraph, int] | None:
    """A CUDA graph of enough calls of `fn` (1-64) to run about `replay_ms`, and that number;
    None if `fn` cannot be captured. The graph is the last capture of `fn`."""
    single = capture_graph(fn, 1)
    if single is None:
        return None
    calls = max(1, min(64, math.ceil(replay_ms / max(event_ms(single.replay), 1e-3))))
    graph = single if calls == 1 else capture_graph(fn, calls)
    return None if graph is None else (graph, calls)


def soak(graph: torch.cuda.CUDAGraph, soak_ms: float) -> None:
    """Replays `graph` for at least `soak_ms`, so the card settles at the clock it holds
    under this load."""
    soaked = 0.0
    while soaked < soak_ms:
        soaked += event_ms(graph.replay)


def time_sustained_graphs_ms(
    sides: dict[str, Callable[[], object]],
    *,
    replay_ms: float = 20.0,
    soak_ms: float = 250.0,
    samples: int = 8,
    passes: int = 2,
    rotate: bool = False,
) -> dict[str, float | None]:
    """Median device time of one call of each side under a sustained load, from CUDA-graph
    replays.

    Under a long load an H100 holds its power cap by moving its clock (run 10 logged 1980 MHz
    after idle and 1335-1965 MHz from one 100 ms sample to the next at 700 W), so a side timed
    right after a pause, or right after another side, runs at a clock that is not its own.
    Each side's graph holds enough calls to run about `replay_ms`; a side is replayed alone for
    `soak_ms`, then timed over `samples` replays, one side after another, and the sides go
    again in reverse order for each further pass; each side's median over all its samples is
    taken. Alternating the sides every replay instead (run 10) handed each side the clock the
    one before it left: FlexAttention read 13-18% slower than its eager figure. `rotate`:
    each pass starts one side later than the one before instead (pass i's order is the sides
    rotated by i), so that over as many passes as sides every side takes every place in the
    order once (run 11: with base always first or last, an identical build of it read 3-4%
    faster at S32K). None for a side that cannot be captured."""
    graphs: dict[str, tuple[torch.cuda.CUDAGraph, int]] = {}
    for name, fn in sides.items():
        sized = sized_graph(fn, replay_ms)
        if sized is not None:
            graphs[name] = sized
    times: dict[str, list[float]] = {name: [] for name in graphs}
    names = list(graphs)
    for pass_index in range(passes):
        if rotate:
            shift = pass_index % len(names)
            order = names[shift:] + names[:shift]
        else:
            order = names if pass_index % 2 == 0 else names[::-1]
        for name in order:
            graph, calls = graphs[name]
            soak(graph, soak_ms)
            times[name] += [event_ms(graph.replay) / calls for _ in range(samples)]
    return {name: statistics.median(times[name]) if name in times else None for name in sides}


def full_blocks_mask(grid: torch.Tensor, seq_len: int) -> BlockMask:
    """The mask of a [1, heads, q-blocks, kv-blocks] grid of full blocks over `seq_len` queries
    and keys (no partial block, no element rule)."""
    return BlockMask.from_block_grids(
        partial_blocks=torch.zeros_like(grid),
        full_blocks=grid,
        element_mask=ElementMask(),
        block_size=BLOCK,
        q_len=seq_len,
        kv_len=seq_len,
    )


def random_mask(
    heads: int,
    seq_len: int,
    density: float,
    seed: int,
    device: str = "cuda",
    *,
    paired: bool = False,
) -> BlockMask:
    """Full blocks drawn independently per (head, q-block, kv-block) with probability
    `density` (density 1.0: every block). paired: drawn once per pair of query blocks (2 i,
    2 i + 1) and shared by both, as the kernel's `pair_tiles` needs."""
    blocks = math.ceil(seq_len / BLOCK)
    rows = math.ceil(blocks / 2) if paired else blocks
    generator = torch.Generator(device=device).manual_seed(seed)
    grid = torch.rand(1, heads, rows, blocks, device=device, generator=generator) < density
    if paired:
        grid = grid.repeat_interleave(2, dim=2)[:, :, :blocks]
    return full_blocks_mask(grid, seq_len)


def pattern_mask(pattern: PatternConfig, seq_len: int, device: str = "cuda") -> BlockMask:
    return compile_block_mask(
        pattern, batch=1, q_len=seq_len, kv_len=seq_len, device=torch.device(device)
    )


PAIRED_RANDOM = "paired-random-"
"""Masks `paired-random-D`: `random_mask(..., paired=True)` (bench.kernel_pairs)."""


def masks_for(
    heads: int, seq_len: int, names: list[str], device: str = "cuda"
) -> dict[str, BlockMask]:
    masks: dict[str, BlockMask] = {}
    for name in names:
        if name.startswith("random-"):
            density = float(name.removeprefix("random-"))
            masks[name] = random_mask(heads, seq_len, density, seed=seq_len, device=device)
        elif name.startswith(PAIRED_RANDOM):
            density = float(name.removeprefix(PAIRED_RANDOM))
            masks[name] = random_mask(
                heads, seq_len, density, seed=seq_len, device=device, paired=True
            )
        elif name == "window-1024":
            window = PatternConfig(type=PatternType.WINDOW, window=1024)
            masks[name] = pattern_mask(window, seq_len, device)
        elif name == "global-window":
            pattern = PatternConfig(type=PatternType.GLOBAL_WINDOW, window=1024, global_tokens=256)
            masks[name] = pattern_mask(pattern, seq_len, device)
        elif name == "causal":
            masks[name] = pattern_mask(PatternConfig(type=PatternType.CAUSAL), seq_len, device)
        else:
            raise ValueError(f"unknown mask {name}")
    return masks


def visited_pairs(mask: BlockMask, heads: int) -> int:
    """Visited (q-block, kv-block) pairs summed over heads."""
    counts = mask.kv_num_blocks.long() + mask.full_kv_num_blocks.long()
    return int(counts.expand(1, heads, -1).sum())


def environment(command: list[str]) -> dict[str, Any]:
    _, driver = gpu_and_driver()
    return {
        "device": torch.cuda.get_device_name(),
        "driver": driver,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),  # type: ignore[no-untyped-call]
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(command),
    }


@cache
def this_run_environment() -> dict[str, Any]:
    """This process's environment, taken once: a result rewritten after every row keeps the
    date its run started."""
    return environment([sys.executable, *sys.argv])


def inputs_for(seq_len: int, head_dim: int, heads: int) -> tuple[torch.Tensor, ...]:
    """q, k, v of one benchmark shape (batch 1, bfloat16), seeded by the shape so that every
    run, and bench.kernel_case's profiled launch, sees the same data."""
    torch.manual_seed(seq_len + head_dim)
    shape = (1, heads, seq_len, head_dim)
    return tuple(torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(3))


@dataclass(frozen=True)
class Problem:
    """One benchmark row: a shape, a mask, and its inputs."""

    seq_len: int
    head_dim: int
    heads: int
    mask_name: str
    mask: BlockMask
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor

    def row(self) -> dict[str, Any]:
        """The fields that name this row in a result file."""
        return {
            "seq_len": self.seq_len,
            "head_dim": self.head_dim,
            "heads": self.heads,
            "mask": self.mask_name,
        }

    def label(self) -> str:
        """The start of this row's printed line."""
        return f"S={self.seq_len:6d} D={self.head_dim:3d} {self.mask_name:14s}"


def problems(seq_lens: str, head_dims: str, heads: int, mask_names: str) -> Iterator[Problem]:
    """bench.kernel's rows for comma-separated sequence lengths, head dims and masks, head dims
    outermost: inputs drawn once per (head dim, sequence length), then each mask in turn."""
    for head_dim in (int(d) for d in head_dims.split(",")):
        for seq_len in (int(s) for s in seq_lens.split(",")):
            q, k, v = inputs_for(seq_len, head_dim, heads)
            for name, mask in masks_for(heads, seq_len, mask_names.split(",")).items():
                yield Problem(seq_len, head_dim, heads, name, mask, q, k, v)


def cudnn_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool
) -> torch.Tensor:
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return functional.scaled_dot_product_attention(q, k, v, is_causal=causal)


def bench_shape(
    seq_len: int, head_dim: int, heads: int, mask_names: list[str], with_flex: bool
) -> list[dict[str, Any]]:
    q, k, v = inputs_for(seq_len, head_dim, heads)
    dense_flops = 4 * heads * seq_len * seq_len * head_dim

    cudnn_dense = partial(cudnn_attention, q, k, v, causal=False)
    cudnn_causal = partial(cudnn_attention, q, k, v, causal=True)
    cudnn_ms = time_ms(cudnn_dense)
    cudnn_causal_ms = time_ms(cudnn_causal)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        flash_ms = time_ms(lambda: functional.scaled_dot_product_attention(q, k, v))
    # A fresh compile cache per shape: FlexAttention recompiles for every mask shape, and past
    # dynamo's recompile limit it falls back to eager attention, which needs S^2 memory.
    torch._dynamo.reset()
    flex = torch.compile(flex_attention.flex_attention, dynamic=False)

    rows = []
    for name, mask in masks_for(heads, seq_len, mask_names).items():
        pairs = visited_pairs(mask, heads)
        density = pairs / (heads * math.ceil(seq_len / BLOCK) ** 2)
        flops = 4 * BLOCK * BLOCK * head_dim * pairs
        sides: dict[str, Callable[[], object]] = {
            "ours": partial(ops.block_sparse_attention, q, k, v, block_mask=mask),
            "cudnn_dense": cudnn_dense,
        }
        if name == "causal":
            sides["cudnn_causal"] = cudnn_causal
        if with_flex:
            sides["flex"] = partial(flex, q, k, v, block_mask=mask.to_flex_attention())
        ours_ms = time_ms(sides["ours"])
        flex_ms = time_ms(sides["flex"]) if with_flex else None
        graphs = time_sustained_graphs_ms(sides)
        ours_graph_ms, flex_graph_ms = graphs["ours"], graphs.get("flex")
        dense_ref_ms = cudnn_causal_ms if name == "causal" else cudnn_ms
        dense_ref_graph_ms = graphs["cudnn_causal" if name == "causal" else "cudnn_dense"]
        graph_ratio = None
        if ours_graph_ms is not None and dense_ref_graph_ms is not None:
            graph_ratio = ours_graph_ms / (
                (density if name != "causal" else 1.0) * dense_ref_graph_ms
            )
        row = {
            "seq_len": seq_len,
            "head_dim": head_dim,
            "heads": heads,
            "mask": name,
            "density": round(density, 4),
            "ours_ms": ours_ms,
            "ours_tflops": flops / ours_ms / 1e9,
            "cudnn_dense_ms": cudnn_ms,
            "cudnn_dense_tflops": dense_flops / cudnn_ms / 1e9,
            "cudnn_causal_ms": cudnn_causal_ms,
            "flash_dense_ms": flash_ms,
            "flex_ms": flex_ms,
            "time_over_density_x_cudnn": ours_ms / (density * dense_ref_ms)
            if name != "causal"
            else ours_ms / cudnn_causal_ms,
            "speedup_vs_flex": None if flex_ms is None else flex_ms / ours_ms,
            # The same from CUDA-graph replays under a sustained load, timed beside this row's
            # cuDNN (and FlexAttention) replays: device time without the host's launch cost,
            # each side at its own clock under the power cap (time_sustained_graphs_ms).
            "ours_graph_ms": ours_graph_ms,
            "ours_graph_tflops": None if ours_graph_ms is None else flops / ours_graph_ms / 1e9,
            "cudnn_dense_graph_ms": graphs["cudnn_dense"],
            "cudnn_causal_graph_ms": graphs.get("cudnn_causal"),
            "graph_time_over_density_x_cudnn": graph_ratio,
            "flex_graph_ms": flex_graph_ms,
            "graph_speedup_vs_flex": time_ratio(flex_graph_ms, ours_graph_ms),
        }
        rows.append(row)
        print(
            f"S={seq_len:6d} D={head_dim:3d} {name:14s} d={density:.3f} | graphs: ours "
            f"{format_number(ours_graph_ms, '8.3f')} ms {format_number(row['ours_graph_tflops'], '5.1f')} TF"
            f" cuDNN {format_number(dense_ref_graph_ms, '8.3f')} flex {format_number(flex_graph_ms, '8.3f')}"
            f" t/(d*cuDNN) {format_number(graph_ratio, '.2f')} x flex "
            f"{format_number(row['graph_speedup_vs_flex'], '.2f')} | eager: ours {ours_ms:8.3f} ms "
            f"{row['ours_tflops']:5.1f} TF cuDNN dense {cudnn_ms:8.3f} "
            f"({row['cudnn_dense_tflops']:5.1f} TF) t/(d*cuDNN) "
            f"{row['time_over_density_x_cudnn']:.2f} x flex {format_number(row['speedup_vs_flex'], '.2f')}",
            flush=True,
        )
    return rows


def time_ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, two sides' times; None where either side has none."""
    return None if numerator is None or denominator is None else numerator / denominator


def format_number(value: object, spec: str) -> str:
    """A number for a printed row, formatted by `spec`: '-' where there is none."""
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_row_arguments(
        parser, seq_lens="4096,16384,32768", head_dims="128,64", masks=",".join(MASK_NAMES)
    )
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    add_kernel_arguments(parser)
    args = parser.parse_args(argv)
    if not load_kernel(args.library):
        return 1
    this_run_environment()  # taken now: the result's date is when the run started
    rows: list[dict[str, Any]] = []
    for head_dim in (int(d) for d in args.head_dims.split(",")):
        for seq_len in (int(s) for s in args.seq_lens.split(",")):
            rows += bench_shape(
                seq_len, head_dim, args.heads, args.masks.split(","), not args.no_flex
            )
            write_result(args.out, rows=rows)  # after every shape: a cut-short run keeps its rows
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
