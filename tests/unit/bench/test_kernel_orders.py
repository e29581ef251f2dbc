"""bench.kernel_orders' CPU parts: the orders it compares and where it puts them among the op's
arguments."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import kernel, kernel_orders
from bench.kernel import masks_for
from sas_runtime.block_mask import compile_block_mask
from sas_runtime.config import PatternConfig, PatternType
from sas_runtime.kernels import ops

SCHEMA_SOURCE = Path(ops.__file__).parent / "csrc" / "block_sparse_attention.cpp"


def test_the_tile_order_goes_where_the_ops_schema_has_it() -> None:
    text = SCHEMA_SOURCE.read_text()
    schema = "".join(re.findall(r'"([^"]*)"', text.split("m.def(", 1)[1].split(");", 1)[0]))
    parameters = schema.split("(", 1)[1].split(")", 1)[0].split(",")
    names = [parameter.split("=")[0].split()[-1] for parameter in parameters]
    assert names[kernel_orders.TILE_ORDER_ARGUMENT] == "tile_order"

    mask = compile_block_mask(
        PatternConfig(type=PatternType.CAUSAL), batch=1, q_len=512, kv_len=512
    )
    q = torch.zeros(1, 2, 512, 64, dtype=torch.bfloat16)
    arguments = ops.op_arguments(q, q, q, block_mask=mask)
    assert len(arguments) == len(names)
    order = torch.arange(8, dtype=torch.int32)
    replaced = kernel_orders.with_tile_order(arguments, order)
    assert replaced[kernel_orders.TILE_ORDER_ARGUMENT] is order
    assert all(
        a is b
        for i, (a, b) in enumerate(zip(arguments, replaced, strict=True))
        if i != kernel_orders.TILE_ORDER_ARGUMENT
    )


def test_every_order_compared_takes_every_tile_once() -> None:
    mask = compile_block_mask(
        PatternConfig(type=PatternType.CAUSAL), batch=1, q_len=1024, kv_len=1024
    )
    q = torch.zeros(2, 4, 1024, 64, dtype=torch.bfloat16)
    orders = kernel_orders.orders_for(mask, q, groups=[2, 3])
    assert list(orders) == [
        "classes",
        "classes-again",
        "kernel",
        "classes-per-2-heads",
        "classes-per-3-heads",
    ]
    assert orders["kernel"] is None  # the kernel's own order
    # the control is the wrapper's order in a tensor of its own
    control, classes = orders["classes-again"], orders["classes"]
    assert control is not None
    assert classes is not None
    assert control is not classes
    assert torch.equal(control, classes)
    for name, order in orders.items():
        if order is not None:
            assert sorted(order.tolist()) == list(range(2 * 4 * 8)), name


def test_the_sorted_tail_orders_come_one_per_wave_count_and_factor() -> None:
    mask = compile_block_mask(
        PatternConfig(type=PatternType.CAUSAL), batch=1, q_len=1024, kv_len=1024
    )
    q = torch.zeros(1, 2, 1024, 64, dtype=torch.bfloat16)
    orders = kernel_orders.orders_for(
        mask, q, groups=[], tail_waves=(1, 4), long_first=(1.5, 2.0), sms=3
    )
    assert list(orders)[3:] == [
        "sorted-last-1-waves",
        "long-1.5x-then-sorted-last-1-waves",
        "long-2x-then-sorted-last-1-waves",
        "sorted-last-4-waves",
        "long-1.5x-then-sorted-last-4-waves",
        "long-2x-then-sorted-last-4-waves",
    ]
    shape = {"batch": 1, "heads": 2, "q_blocks": 8}
    wrapper = orders["long-2x-then-sorted-last-4-waves"]
    assert wrapper is not None
    assert torch.equal(wrapper, ops.wrapper_tile_order(mask, **shape, sms=3))
    tail = orders["long-1.5x-then-sorted-last-1-waves"]
    assert tail is not None
    assert torch.equal(
        tail, ops.long_tiles_first_order(mask, **shape, sorted_tail=3, long_first=1.5)
    )


def test_each_row_times_every_order_beside_cudnn_and_reports_them_over_the_wrappers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    called_orders: list[object] = []

    def op(*arguments: object) -> None:
        called_orders.append(arguments[kernel_orders.TILE_ORDER_ARGUMENT])

    def sustained(
        sides: dict[str, Callable[[], object]], *, passes: int, rotate: bool
    ) -> dict[str, float | None]:
        assert (passes, rotate) == (len(sides), True)
        for call in sides.values():
            call()
        times = {
            "classes": 2.0,
            "classes-again": 2.02,
            "kernel": 2.2,
            "classes-per-2-heads": 1.8,
            "cudnn_dense": 9.0,
        }
        return {name: times[name] for name in sides}

    written: dict[str, Any] = {}
    monkeypatch.setattr(kernel_orders, "load_kernel", lambda library: True)
    monkeypatch.setattr(kernel_orders, "_kernel_op", lambda: op)
    # bench.kernel.problems draws the inputs and masks: on the CPU here
    monkeypatch.setattr(
        kernel,
        "inputs_for",
        lambda seq_len, head_dim, heads: [torch.zeros(1, heads, seq_len, head_dim)] * 3,
    )
    monkeypatch.setattr(
        kernel,
        "masks_for",
        lambda heads, seq_len, names: masks_for(heads, seq_len, names, device="cpu"),
    )
    monkeypatch.setattr(kernel_orders, "cudnn_attention", lambda q, k, v, causal: None)
    monkeypatch.setattr(kernel_orders, "time_sustained_graphs_ms", sustained)
    monkeypatch.setattr(kernel_orders, "write_result", lambda out, **fields: written.update(fields))
    argv = ["--seq-lens", "1024", "--head-dim", "64", "--heads", "4", "--groups", "2"]
    assert kernel_orders.main([*argv, "--masks", "causal"]) == 0
    assert called_orders[2] is None  # the kernel's own order: none given
    given = [order for i, order in enumerate(called_orders) if i != 2]
    assert all(isinstance(order, torch.Tensor) for order in given)
    (row,) = written["rows"]
    assert row["over_classes"] == {
        "classes": 1.0,
        "classes-again": pytest.approx(1.01),
        "kernel": pytest.approx(1.1),
        "classes-per-2-heads": pytest.approx(0.9),
    }
    assert (
        "classes    2.000 ms | classes-again 1.010 | kernel 1.100 | classes-per-2-heads 0.900"
        in capsys.readouterr().out
    )
