"""Typed Python face of the `sas::block_sparse_attention_fwd` op: loading, fake kernel, wrapper.

Importing this module never needs a GPU or a build: `load_library()` loads the compiled
extension when there is one and records why not otherwise; `unavailable_reason()` says what
stops the op from running here (None when it can run).
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import torch

from sas_runtime.block_mask import BlockMask
from sas_runtime.kernels.build import LIBRARY_NAME, default_build_dir

__all__ = [
    "BLOCK_SIZE",
    "block_sparse_attention",
    "carries_last_product",
    "library_path",
    "load_library",
    "long_tiles_first_order",
    "op_arguments",
    "orders_tiles",
    "pairs_share_blocks",
    "unavailable_reason",
    "wrapper_tile_order",
]

BLOCK_SIZE = 128
"""Tokens per mask block on both axes: the kernel's query tile and key/value tile."""

_OP_NAME = "sas::block_sparse_attention_fwd"
_MAX_TOKENS = 2**31 - 1
"""The kernel holds positions in 32-bit ints."""
_load_error: str | None = "not loaded: call load_library()"


def library_path() -> Path:
    """The compiled extension: $SAS_KERNEL_LIBRARY, else the default build directory's."""
    configured = os.environ.get("SAS_KERNEL_LIBRARY")
    if configured:
        return Path(configured)
    return default_build_dir() / f"{LIBRARY_NAME}.so"


def load_library(path: Path | None = None) -> str | None:
    """Loads the extension (once) and registers its fake kernel; returns the failure reason or
    None. A missing or broken build is a reason, never an exception."""
    global _load_error
    if _load_error is None:
        return None
    target = path or library_path()
    if not target.exists():
        _load_error = f"sparse kernels not built (no library at {target})"
        return _load_error
    try:
        torch.ops.load_library(str(target))  # type: ignore[no-untyped-call]
    except OSError as error:
        _load_error = f"sparse kernels failed to load from {target}: {error}"
        return _load_error
    torch.library.register_fake(_OP_NAME)(_block_sparse_attention_fwd_fake)
    _load_error = None
    return None


def unavailable_reason(device: torch.device | None = None) -> str | None:
    """Why the op cannot run on `device` (default: the current CUDA device): not built, no
    CUDA, not Hopper; or None."""
    if _load_error is not None:
        return _load_error
    if not torch.cuda.is_available():
        return "no CUDA device"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) != (9, 0):
        return f"the sparse kernel needs compute capability 9.0 (Hopper), found {major}.{minor}"
    return None


def _require(condition: bool, message: str) -> None:
    torch._check(condition, lambda: message)  # type: ignore[no-untyped-call]


def _block_sparse_attention_fwd_fake(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    full_kv_num_blocks: torch.Tensor,
    full_kv_indices: torch.Tensor,
    document_ids: torch.Tensor | None,
    kv_lengths: torch.Tensor | None,
    scale: float,
    causal: bool,
    window: int,
    global_tokens: int,
    tile_order: torch.Tensor | None = None,
    carry_last_product: bool = False,
    pair_tiles: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    _require(q.dim() == 4 and k.dim() == 4 and v.dim() == 4, "q, k, v must be 4-D")
    _require(k.dtype == q.dtype and v.dtype == q.dtype, "q, k, v dtypes differ")
    _require(q.dtype in (torch.bfloat16, torch.float16), "bf16 or fp16 only")
    _require(k.shape == v.shape, "k and v shapes differ")
    _require(q.shape[3] == k.shape[3], "q and k head dims differ")
    _require(q.shape[1] % k.shape[1] == 0, "heads must be a multiple of kv_heads")
    for mask in (kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices):
        _require(mask.dtype == torch.int32, "block mask tensors must be int32")
    _require(-1 <= window <= _MAX_TOKENS, "window must be -1 (none) or in [0, 2^31)")
    _require(0 <= global_tokens <= _MAX_TOKENS, "global_tokens must be in [0, 2^31)")
    batch, heads, q_len, head_dim = q.shape
    if tile_order is not None:
        _require(tile_order.dtype == torch.int32, "tile_order must be int32")
        tiles = batch * heads * -(-q_len // BLOCK_SIZE)
        _require(tile_order.shape == (tiles,), "tile_order must hold one entry per tile")
    if pair_tiles:
        _require(head_dim == 128, "pair_tiles needs head_dim 128")
        _require(-(-q_len // BLOCK_SIZE) % 2 == 0, "pair_tiles needs an even count of query blocks")
        _require(tile_order is None, "pair_tiles runs the kernel's own order: pass no tile_order")
    out = q.new_empty(batch, heads, q_len, head_dim)
    lse = q.new_empty(batch, heads, q_len, dtype=torch.float32)
    return out, lse


def long_tiles_first_order(
    block_mask: BlockMask,
    *,
    batch: int,
    heads: int,
    q_blocks: int,
    heads_per_group: int | None = None,
    sorted_tail: int | None = None,
    long_first: float | None = None,
) -> torch.Tensor:
    """The kernel's tiles as int32 tile numbers for the op's `tile_order`, in classes of the
    key blocks each visits (1, 2-3, 4-7, ...), the longest class first; within a class the
    kernel's own order (one head at a time, query blocks from the last down). Long tiles first
    keeps one from starting late and running alone at the end; classes rather than a full
    sort keep few heads' K/V in flight, so they stay in L2 (bench/schedule_model.py).
    `heads_per_group`: classes within each group of that many (batch, head) pairs, one group
    after another, for fewer heads in flight where a class spans them all (S4K random masks:
    15 heads per wave against the kernel's own 5; an experiment, `bench.kernel_orders`).
    The classes were the wrapper's order from run 7 to run 20.
    `sorted_tail`: instead, the kernel's own order with only its last that many tiles sorted,
    longest first, so that the order keeps one head's K/V in flight at a time until the end
    (run 20: the classes read K/V from DRAM twice at S16K random-0.25).
    `long_first` (with `sorted_tail`): tiles visiting at least that many times the mean block
    count go first, longest first, and the sorted tail is taken over the rest (global rows,
    too long for any tail; bench.schedule_model and bench.dram_model price both). With both,
    the wrapper's order since run 21 (`wrapper_tile_order`)."""
    if sorted_tail is not None and heads_per_group is not None:
        raise ValueError("sorted_tail and heads_per_group are two different orders: give one")
    if long_first is not None and sorted_tail is None:
        raise ValueError("long_first goes with sorted_tail")
    counts = (
        block_mask.kv_num_blocks[..., :q_blocks] + block_mask.full_kv_num_blocks[..., :q_blocks]
    )
    counts = counts.expand(batch, heads, q_blocks).flip(-1).reshape(-1)
    if sorted_tail is not None:
        # One stable sort of a key per tile (no shape depends on the counts, so torch.compile
        # and graph capture take it as is): the long tiles (group 0), the rest in the kernel's
        # order (1), its last `sorted_tail` tiles (2); groups 0 and 2 longest first.
        long = torch.zeros_like(counts, dtype=torch.bool)
        if long_first is not None:
            long = counts >= long_first * counts.float().mean()
        rest = ~long
        rank = torch.cumsum(rest, 0) - 1  # each of the rest's place among them
        tail = rest & (rank >= rest.sum() - sorted_tail)
        group = rest.long() + tail.long()
        key = (group << 32) - torch.where(group == 1, 0, counts.long())
        return torch.argsort(key, stable=True).to(torch.int32)
    _, exponent = torch.frexp(counts.float())  # floor(log2(count)) + 1, and 0 for no blocks
    if heads_per_group is None:
        return torch.argsort(exponent, descending=True, stable=True).to(torch.int32)
    group = torch.arange(counts.numel(), device=counts.device) // (heads_per_group * q_blocks)
    # exponent <= 32 for int32 counts: groups ascending, classes descending within each
    return torch.argsort(group * 64 - exponent, stable=True).to(torch.int32)


_tile_orders: weakref.WeakKeyDictionary[BlockMask, dict[tuple[int, int, int], torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)


SORTED_TAIL_WAVES = 4
"""The wrapper's order sorts only the kernel order's last 4 waves of tiles (4 x the SMs)."""

LONG_FIRST = 2.0
"""... after the tiles visiting at least twice the mean block count (global rows)."""


def wrapper_tile_order(
    block_mask: BlockMask, *, batch: int, heads: int, q_blocks: int, sms: int
) -> torch.Tensor:
    """The order the wrapper gives the kernel: `long_tiles_first_order` with the tiles of at
    least `LONG_FIRST` x the mean block count first, then the kernel's own order (one head's
    K/V in flight at a time) with its last `SORTED_TAIL_WAVES` waves sorted longest first.
    Run 21 (bench.kernel_orders, D128): 0-7% faster than the length classes at S4K and 0.5-5%
    at S16K, where it reads K/V from DRAM 1.4-1.7 times against the classes' 2.1-2.4 (ncu,
    random masks)."""
    return long_tiles_first_order(
        block_mask,
        batch=batch,
        heads=heads,
        q_blocks=q_blocks,
        sorted_tail=SORTED_TAIL_WAVES * sms,
        long_first=LONG_FIRST,
    )


MIN_KV_BLOCKS_TO_ORDER = 16
"""Below 16 key blocks (2,048 keys) no tile is long enough for its tail to matter."""


def orders_tiles(tiles: int, kv_blocks: int, sms: int) -> bool:
    """Whether the wrapper gives the kernel `wrapper_tile_order`: only when some tile misses
    the first wave (more tiles than SMs) and a tile can visit 16 key blocks or more."""
    return tiles > sms and kv_blocks >= MIN_KV_BLOCKS_TO_ORDER


def _tile_order(block_mask: BlockMask, q: torch.Tensor, kv_len: int) -> torch.Tensor | None:
    """The schedule for this call: None when order cannot matter (every tile fits the first
    wave) or cannot matter much (no tile can visit 16 key blocks); else
    `wrapper_tile_order`, computed once per mask and shape by an eager call on plain
    tensors. A graph capture uses that order if it exists (its values are final; a mask
    refreshed in place later only makes it a worse schedule, never a wrong one) and otherwise
    computes its own inside the graph, uncached; torch.compile and fake tensors always compute
    their own."""
    batch, heads, q_len, _ = q.shape
    q_blocks = -(-q_len // BLOCK_SIZE)
    kv_blocks = -(-kv_len // BLOCK_SIZE)
    if kv_blocks < MIN_KV_BLOCKS_TO_ORDER:
        return None  # decided before asking the device, so no GPU is needed to learn it
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    if not orders_tiles(batch * heads * q_blocks, kv_blocks, sms):
        return None
    plain = type(q) is torch.Tensor and type(block_mask.kv_num_blocks) is torch.Tensor
    shape = {"batch": batch, "heads": heads, "q_blocks": q_blocks, "sms": sms}
    if torch.compiler.is_compiling() or not plain:
        return wrapper_tile_order(block_mask, **shape)
    key = (batch, heads, q_blocks)
    cached = _tile_orders.get(block_mask, {}).get(key)
    if cached is not None:
        return cached
    order = wrapper_tile_order(block_mask, **shape)
    if not torch.cuda.is_current_stream_capturing():
        _tile_orders.setdefault(block_mask, {})[key] = order
    return order


def pairs_share_blocks(block_mask: BlockMask) -> bool:
    """Whether query blocks 2 i and 2 i + 1 of every (batch, head) list the same key blocks,
    full and partial, in the same order (and the count of query blocks is even): what the
    kernel's `pair_tiles` needs, since each CTA of a pair loads half of every block for both.
    Dense masks qualify; causal, windowed and most random masks do not. Reads the mask back
    from the device (a sync)."""
    counts = (block_mask.kv_num_blocks, block_mask.full_kv_num_blocks)
    lists = (block_mask.kv_indices, block_mask.full_kv_indices)
    if counts[0].shape[-1] % 2:
        return False
    for count, indices in zip(counts, lists, strict=True):
        if not torch.equal(count[..., 0::2], count[..., 1::2]):
            return False
        used = torch.arange(indices.shape[-1], device=indices.device) < count[..., None]
        even, odd = indices[..., 0::2, :], indices[..., 1::2, :]
        if not torch.equal(
            torch.where(used[..., 0::2, :], even, 0), torch.where(used[..., 1::2, :], odd, 0)
        ):
            return False
    return True


MIN_KV_BLOCKS_TO_CARRY = 256
"""From 256 key blocks (32,768 keys) the D128 kernel carries each tile's last product."""


def carries_last_product(head_dim: int, kv_blocks: int) -> bool:
    """Whether the kernel runs each tile's last P V beside the next tile's first Q K^T (the
    same result either way). Run 9 (bench/KERNEL_NOTES.md) measured it 0.94-1.00x base at D128
    with 256 key blocks, on every mask; at 128 blocks up to 1.06x on sparse masks, at 32 blocks
    up to 1.08x, and 1.06-1.12x at D64. Run 10, under a sustained load: 0.945-1.006x at 256
    blocks, 0.976-1.040x at 128. The mean tile length would be the better measure, but it lives
    on the device and the choice is made without a sync."""
    return head_dim == 128 and kv_blocks >= MIN_KV_BLOCKS_TO_CARRY


def op_arguments(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    block_mask: BlockMask,
    scale: float | None = None,
    carry_last_product: bool | None = None,
    pair_tiles: bool = False,
) -> tuple[object, ...]:
    """The positional arguments of `block_sparse_attention_fwd` for one call, as
    `block_sparse_attention` passes them to `torch.ops.sas`: the block size checked, the
    schedule settled, the tile order computed or reused. A benchmark passes the same to a
    variant's namespace (sas_runtime.kernels.build --op-namespace). pair_tiles (the caller
    vouches for `pairs_share_blocks`) runs the CTAs in pairs sharing each K/V load, in the
    kernel's own order; not chosen by the wrapper until measured."""
    if block_mask.block_size != BLOCK_SIZE:
        raise ValueError(
            f"the sparse kernel needs {BLOCK_SIZE}-token blocks, got {block_mask.block_size}"
        )
    element = block_mask.element_mask
    if carry_last_product is None:
        carry_last_product = carries_last_product(q.shape[-1], -(-k.shape[2] // BLOCK_SIZE))
    return (
        q,
        k,
        v,
        block_mask.kv_num_blocks,
        block_mask.kv_indices,
        block_mask.full_kv_num_blocks,
        block_mask.full_kv_indices,
        element.document_ids,
        element.kv_lengths,
        scale if scale is not None else q.shape[-1] ** -0.5,
        element.causal,
        -1 if element.window is None else element.window,
        element.global_tokens,
        None if pair_tiles else _tile_order(block_mask, q, k.shape[2]),
        carry_last_product,
        pair_tiles,
    )


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    block_mask: BlockMask,
    scale: float | None = None,
    carry_last_product: bool | None = None,
    pair_tiles: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse attention forward on an H100.

    q: [B, Hq, Sq, D]; k, v: [B, Hkv, Sk, D], bf16 or fp16, D in {64, 128}, head_dim contiguous.
    block_mask: compiled with 128-token blocks for these shapes, on q's device; its element mask
    applies inside partial blocks only, and keys past its kv_lengths are never seen.
    carry_last_product: which of the kernel's two schedules runs (the same result); None lets
    `carries_last_product` choose from the shapes.
    pair_tiles: CTAs in pairs sharing each K/V load; only for masks where `pairs_share_blocks`
    (else the output is wrong), at D128 with an even count of query blocks.
    Returns (out [B, Hq, Sq, D] in q's dtype, lse [B, Hq, Sq] float32, natural log; rows that
    see no key give 0 and -inf).
    """
    arguments = op_arguments(
        q,
        k,
        v,
        block_mask=block_mask,
        scale=scale,
        carry_last_product=carry_last_product,
        pair_tiles=pair_tiles,
    )
    result: tuple[torch.Tensor, torch.Tensor] = torch.ops.sas.block_sparse_attention_fwd(*arguments)
    return result
