"""bench.kernel_orders' CPU parts: the orders it compares and where it puts them among the op's
arguments."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from bench import kernel_orders
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
    assert list(orders) == ["classes", "kernel", "classes-per-2-heads", "classes-per-3-heads"]
    assert orders["kernel"] is None  # the kernel's own order
    for name, order in orders.items():
        if order is not None:
            assert sorted(order.tolist()) == list(range(2 * 4 * 8)), name
