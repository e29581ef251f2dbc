"""Attention patterns compiled to block masks in FlexAttention's BlockMask layout.

A pattern decides, for every query block and key block, whether the kernel visits the block and
whether it must apply the element predicate there:

- *full* blocks: every (query, key) pair in them is allowed; no element mask needed.
- *partial* blocks: some pairs are allowed; the kernel applies `ElementMask` element by element.
- all other blocks are skipped.

Position patterns (dense, causal, window, global-window) are classified exactly from block
coordinates, in O(blocks). Documents are classified exactly by evaluating the predicate tile by
tile. Dilated and top-k are block-level selections: the chosen blocks are full unless padding
(or a ragged tail) cuts into them.

Query rows past `q_len` do not exist, so they never make a block partial; key columns past the
sequence's valid length are masked, so a ragged key tail is always a partial block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.attention import flex_attention

from sas_runtime.config import PatternConfig, PatternType

__all__ = ["BlockMask", "ElementMask", "compile_block_mask", "pattern_needs_scores"]


@dataclass(frozen=True, slots=True, eq=False)
class ElementMask:
    """The element predicate applied inside partial blocks (full blocks satisfy it everywhere).

    allowed(b, q, k) = (kv_lengths is None or k < kv_lengths[b])
                   and (not causal or k <= q)
                   and (window is None or |q - k| <= window
                        or q < global_tokens or k < global_tokens)
                   and (document_ids is None or document_ids[b, q] == document_ids[b, k])

    causal: keys at or before the query (top-left aligned when q_len != kv_len).
    window: radius in tokens; None means no window.
    global_tokens: leading tokens that see and are seen by all (with a window only); a multiple
        of the block size; 0 means none.
    kv_lengths: [B] int32, valid keys of each sequence (the rest is padding); None means all.
    document_ids: [B, S] int32, the document of each position (q_len == kv_len == S); None
        means a single document.
    """

    causal: bool = False
    window: int | None = None
    global_tokens: int = 0
    kv_lengths: Tensor | None = None
    document_ids: Tensor | None = None

    @property
    def allows_every_pair(self) -> bool:
        """True when no term narrows the predicate (every in-range pair is allowed)."""
        return (
            not self.causal
            and self.window is None
            and self.kv_lengths is None
            and self.document_ids is None
        )

    def allowed(self, b: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        """The predicate on broadcastable index tensors (also FlexAttention's mask_mod body)."""
        # All-true over the broadcast (q, k) grid; each term below narrows it.
        allowed = (q_idx >= 0) & (kv_idx >= 0)
        if self.kv_lengths is not None:
            allowed = allowed & (kv_idx < self.kv_lengths[b])
        if self.causal:
            allowed = allowed & (kv_idx <= q_idx)
        if self.window is not None:
            in_window = (q_idx - kv_idx).abs() <= self.window
            if self.global_tokens:
                in_window = in_window | (q_idx < self.global_tokens) | (kv_idx < self.global_tokens)
            allowed = allowed & in_window
        if self.document_ids is not None:
            allowed = allowed & (self.document_ids[b, q_idx] == self.document_ids[b, kv_idx])
        return allowed

    def to_dense(self, batch: int, q_len: int, kv_len: int, device: torch.device) -> Tensor:
        """Boolean [batch, q_len, kv_len]: the predicate at every position."""
        b = torch.arange(batch, device=device).view(batch, 1, 1)
        q_idx = torch.arange(q_len, device=device).view(1, q_len, 1)
        kv_idx = torch.arange(kv_len, device=device).view(1, 1, kv_len)
        return self.allowed(b, q_idx, kv_idx).expand(batch, q_len, kv_len)


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class BlockMask:
    """A compiled pattern in FlexAttention's BlockMask layout (forward pairs only).

    QB = ceil(q_len / block_size) query blocks, KB = ceil(kv_len / block_size) key blocks.
    B is the batch size or 1 (same mask for every sequence); H is the number of query heads or 1
    (same mask for every head), as FlexAttention broadcasts them.

    kv_num_blocks: [B, H, QB] int32, partial key blocks of each query block.
    kv_indices: [B, H, QB, KB] int32, the partial key blocks first, ascending; entries past
        kv_num_blocks are the remaining block indices and must be ignored.
    full_kv_num_blocks: [B, H, QB] int32, full key blocks of each query block.
    full_kv_indices: [B, H, QB, KB] int32, the full key blocks first, ascending; likewise.
    partial_blocks, full_blocks: [B, H, QB, KB] bool, the same sets as grids (disjoint).
    element_mask: the predicate the kernel applies inside partial blocks.
    """

    kv_num_blocks: Tensor
    kv_indices: Tensor
    full_kv_num_blocks: Tensor
    full_kv_indices: Tensor
    partial_blocks: Tensor
    full_blocks: Tensor
    element_mask: ElementMask
    block_size: int
    q_len: int
    kv_len: int

    @classmethod
    def from_block_grids(
        cls,
        *,
        partial_blocks: Tensor,
        full_blocks: Tensor,
        element_mask: ElementMask,
        block_size: int,
        q_len: int,
        kv_len: int,
    ) -> BlockMask:
        """Build the count/index pairs from disjoint [B, H, QB, KB] boolean grids."""
        kv_num_blocks, kv_indices = _counts_and_indices(partial_blocks)
        full_kv_num_blocks, full_kv_indices = _counts_and_indices(full_blocks)
        return cls(
            kv_num_blocks=kv_num_blocks,
            kv_indices=kv_indices,
            full_kv_num_blocks=full_kv_num_blocks,
            full_kv_indices=full_kv_indices,
            partial_blocks=partial_blocks,
            full_blocks=full_blocks,
            element_mask=element_mask,
            block_size=block_size,
            q_len=q_len,
            kv_len=kv_len,
        )

    @property
    def allows_every_pair(self) -> bool:
        """True when every query may attend to every key (no mask needed at all)."""
        visited = self.full_blocks | self.partial_blocks
        return self.element_mask.allows_every_pair and bool(visited.all())

    @property
    def density(self) -> float:
        """Fraction of (query block, key block) pairs the kernel visits."""
        visited = self.full_blocks | self.partial_blocks
        return float(visited.float().mean().item())

    def map_tensors(self, fn: Callable[[Tensor], Tensor]) -> BlockMask:
        """The same mask with `fn` applied to each of its tensors (the element mask's too)."""
        element = self.element_mask
        return dataclasses.replace(
            self,
            kv_num_blocks=fn(self.kv_num_blocks),
            kv_indices=fn(self.kv_indices),
            full_kv_num_blocks=fn(self.full_kv_num_blocks),
            full_kv_indices=fn(self.full_kv_indices),
            partial_blocks=fn(self.partial_blocks),
            full_blocks=fn(self.full_blocks),
            element_mask=dataclasses.replace(
                element,
                kv_lengths=None if element.kv_lengths is None else fn(element.kv_lengths),
                document_ids=None if element.document_ids is None else fn(element.document_ids),
            ),
        )

    def to(self, device: torch.device) -> BlockMask:
        """The same mask with every tensor on `device`."""
        return self.map_tensors(lambda t: t.to(device))

    def to_dense(self) -> Tensor:
        """Boolean [B, H, q_len, kv_len]: True where a query may attend to a key."""
        batch = self.full_blocks.shape[0]
        device = self.full_blocks.device
        visited = _expand_blocks(self.full_blocks | self.partial_blocks, self.block_size)
        visited = visited[..., : self.q_len, : self.kv_len]
        elements = self.element_mask.to_dense(batch, self.q_len, self.kv_len, device)
        return visited & elements.unsqueeze(1)

    def to_flex_attention(self) -> flex_attention.BlockMask:
        """The same mask as torch's FlexAttention BlockMask. Its mask_mod is the whole mask (the
        visited blocks and ElementMask), as FlexAttention defines the mask by mask_mod alone."""
        element = self.element_mask
        visited = self.full_blocks | self.partial_blocks
        same_for_batch, same_for_heads = visited.shape[0] == 1, visited.shape[1] == 1
        block_size = self.block_size

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            grid_b = torch.zeros_like(b) if same_for_batch else b
            grid_h = torch.zeros_like(h) if same_for_heads else h
            in_visited_block = visited[grid_b, grid_h, q_idx // block_size, kv_idx // block_size]
            return in_visited_block & element.allowed(b, q_idx, kv_idx)

        flex_mask: flex_attention.BlockMask = flex_attention.BlockMask.from_kv_blocks(
            self.kv_num_blocks,
            self.kv_indices,
            self.full_kv_num_blocks,
            self.full_kv_indices,
            BLOCK_SIZE=self.block_size,
            mask_mod=mask_mod,
            seq_lengths=(self.q_len, self.kv_len),
        )
        return flex_mask


def pattern_needs_scores(pattern: PatternConfig) -> bool:
    """Whether compiling the pattern needs q and k (top-k picks blocks from pooled scores)."""
    return pattern.type is PatternType.TOPK


def compile_block_mask(
    pattern: PatternConfig,
    *,
    batch: int,
    q_len: int,
    kv_len: int,
    kv_lengths: Tensor | None = None,
    document_ids: Tensor | None = None,
    q: Tensor | None = None,
    k: Tensor | None = None,
    device: torch.device | None = None,
) -> BlockMask:
    """Compile `pattern` for one batch shape.

    kv_lengths: [batch] valid keys per sequence (padding after), None when there is no padding.
    document_ids: [batch, kv_len] integer document of each position (pattern 'document' only).
    q: [batch, heads, q_len, head_dim], k: [batch, kv_heads, kv_len, head_dim] (pattern 'topk'
    only; the mask then has one row of blocks per query head).
    device: where the mask lives; default: that of q, kv_lengths or document_ids, else the CPU.
    Raises ValueError when the inputs cannot carry the pattern.
    """
    if q_len < 1 or kv_len < 1:
        raise ValueError(f"q_len and kv_len must be at least 1, got {q_len} and {kv_len}")
    if device is None:
        given = [t.device for t in (q, kv_lengths, document_ids) if t is not None]
        device = given[0] if given else torch.device("cpu")
    block_size = pattern.block_size
    lengths = _checked_kv_lengths(kv_lengths, batch, kv_len, device)
    documents = _checked_document_ids(pattern, document_ids, batch, q_len, kv_len, device)
    element = ElementMask(
        causal=pattern.type is PatternType.CAUSAL,
        window=pattern.window
        if pattern.type in (PatternType.WINDOW, PatternType.GLOBAL_WINDOW)
        else None,
        global_tokens=(pattern.global_tokens or 0)
        if pattern.type is PatternType.GLOBAL_WINDOW
        else 0,
        kv_lengths=lengths,
        document_ids=documents,
    )
    if documents is None:
        any_allowed, all_allowed = _classify_by_position(element, q_len, kv_len, block_size, device)
    else:
        any_allowed, all_allowed = _classify_by_tiles(element, batch, q_len, kv_len, block_size)
    any_allowed = any_allowed.unsqueeze(1)
    all_allowed = all_allowed.unsqueeze(1)
    if pattern.type is PatternType.DILATED:
        assert pattern.dilation is not None
        selected = _dilated_selection(q_len, kv_len, block_size, pattern.dilation, device)
        any_allowed = any_allowed & selected
        all_allowed = all_allowed & selected
    elif pattern.type is PatternType.TOPK:
        assert pattern.top_k is not None
        selected = _topk_selection(q, k, any_allowed, lengths, batch, q_len, kv_len, pattern)
        any_allowed = any_allowed & selected
        all_allowed = all_allowed & selected
    return BlockMask.from_block_grids(
        partial_blocks=any_allowed & ~all_allowed,
        full_blocks=all_allowed,
        element_mask=element,
        block_size=block_size,
        q_len=q_len,
        kv_len=kv_len,
    )


def _checked_kv_lengths(
    kv_lengths: Tensor | None, batch: int, kv_len: int, device: torch.device
) -> Tensor | None:
    if kv_lengths is None:
        return None
    if kv_lengths.shape != (batch,):
        raise ValueError(f"kv_lengths must have shape [{batch}], got {list(kv_lengths.shape)}")
    # Inside a CUDA-graph capture no value can be read; the capturer pads lengths itself.
    capturing = kv_lengths.is_cuda and torch.cuda.is_current_stream_capturing()
    if not capturing and bool(((kv_lengths < 1) | (kv_lengths > kv_len)).any()):
        raise ValueError(f"kv_lengths must lie in [1, {kv_len}]")
    return kv_lengths.to(device=device, dtype=torch.int32)


def _checked_document_ids(
    pattern: PatternConfig,
    document_ids: Tensor | None,
    batch: int,
    q_len: int,
    kv_len: int,
    device: torch.device,
) -> Tensor | None:
    if pattern.type is not PatternType.DOCUMENT:
        if document_ids is not None:
            raise ValueError(f"document_ids apply to pattern 'document' only, not '{pattern.type}'")
        return None
    if document_ids is None:
        raise ValueError("pattern 'document' needs document_ids [batch, kv_len]")
    if q_len != kv_len:
        raise ValueError(f"pattern 'document' needs q_len == kv_len, got {q_len} and {kv_len}")
    if document_ids.shape != (batch, kv_len):
        raise ValueError(
            f"document_ids must have shape [{batch}, {kv_len}], got {list(document_ids.shape)}"
        )
    if (
        document_ids.is_floating_point()
        or document_ids.is_complex()
        or document_ids.dtype == torch.bool
    ):
        raise ValueError(f"document_ids must be integers, got {document_ids.dtype}")
    return document_ids.to(device=device, dtype=torch.int32)


def _block_bounds(length: int, block_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """First and last index of each block of a sequence, the last clipped to the sequence."""
    first = torch.arange(0, length, block_size, device=device, dtype=torch.int64)
    last = torch.clamp(first + block_size - 1, max=length - 1)
    return first, last


def _classify_by_position(
    element: ElementMask, q_len: int, kv_len: int, block_size: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """[B or 1, QB, KB] any/all allowed, exactly, for the position terms of the predicate.

    Every term except the key-length bound limits only d = k - q, and the differences over a
    rectangle of (q, k) form one contiguous integer interval, so a block has an allowed pair iff
    its d-interval meets the allowed d-interval, and all pairs are allowed iff it lies inside.
    """
    q_first, q_last = _block_bounds(q_len, block_size, device)
    k_first, k_last = _block_bounds(kv_len, block_size, device)
    q_first, q_last = q_first.view(1, -1, 1), q_last.view(1, -1, 1)
    k_first, k_last = k_first.view(1, 1, -1), k_last.view(1, 1, -1)
    if element.kv_lengths is not None:
        lengths = element.kv_lengths.to(torch.int64).view(-1, 1, 1)
    else:
        lengths = torch.full((1, 1, 1), kv_len, dtype=torch.int64, device=device)
    k_valid_last = torch.minimum(k_last, lengths - 1)
    has_keys = k_valid_last >= k_first
    whole_block = k_first + block_size <= lengths

    unbounded = q_len + kv_len + 1
    d_low = k_first - q_last
    d_high = k_valid_last - q_first
    allowed_low = torch.full_like(d_low, -unbounded)
    allowed_high = torch.full_like(d_low, unbounded)
    if element.causal:
        allowed_high = torch.clamp(allowed_high, max=0)
    if element.window is not None:
        windowed = (q_first >= element.global_tokens) & (k_first >= element.global_tokens)
        allowed_low = torch.where(windowed, -element.window, allowed_low)
        allowed_high = torch.where(
            windowed, torch.clamp(allowed_high, max=element.window), allowed_high
        )
    any_allowed = has_keys & (
        torch.maximum(d_low, allowed_low) <= torch.minimum(d_high, allowed_high)
    )
    all_allowed = whole_block & (d_low >= allowed_low) & (d_high <= allowed_high)
    return any_allowed, all_allowed


def _classify_by_tiles(
    element: ElementMask, batch: int, q_len: int, kv_len: int, block_size: int
) -> tuple[Tensor, Tensor]:
    """[B, QB, KB] any/all allowed, exactly, by evaluating the predicate one query block at a time."""
    assert element.document_ids is not None
    device = element.document_ids.device
    kv_blocks = -(-kv_len // block_size)
    padded_kv = kv_blocks * block_size
    b = torch.arange(batch, device=device).view(batch, 1, 1)
    kv_idx = torch.arange(padded_kv, device=device).view(1, 1, padded_kv)
    kv_in_range = kv_idx < kv_len
    kv_clamped = torch.clamp(kv_idx, max=kv_len - 1)
    any_rows, all_rows = [], []
    for q_start in range(0, q_len, block_size):
        q_idx = torch.arange(q_start, min(q_start + block_size, q_len), device=device)
        tile = element.allowed(b, q_idx.view(1, -1, 1), kv_clamped) & kv_in_range
        tile = tile.expand(batch, -1, -1).reshape(batch, -1, kv_blocks, block_size)
        any_rows.append(tile.any(dim=3).any(dim=1))
        all_rows.append(tile.all(dim=3).all(dim=1))
    return torch.stack(any_rows, dim=1), torch.stack(all_rows, dim=1)


def _dilated_selection(
    q_len: int, kv_len: int, block_size: int, dilation: int, device: torch.device
) -> Tensor:
    """[1, 1, QB, KB]: every dilation-th key block (0, d, 2d, ...) plus the diagonal block."""
    q_blocks = torch.arange(-(-q_len // block_size), device=device).view(-1, 1)
    kv_blocks = torch.arange(-(-kv_len // block_size), device=device).view(1, -1)
    return ((kv_blocks % dilation == 0) | (kv_blocks == q_blocks)).view(
        1, 1, q_blocks.numel(), kv_blocks.numel()
    )


def _topk_selection(
    q: Tensor | None,
    k: Tensor | None,
    candidates: Tensor,
    kv_lengths: Tensor | None,
    batch: int,
    q_len: int,
    kv_len: int,
    pattern: PatternConfig,
) -> Tensor:
    """[B, H, QB, KB]: per query block, the top_k key blocks by mean-pooled q·k, plus the
    diagonal block (clipped to the last valid key block) so that no row is empty.

    candidates: [B or 1, 1, QB, KB], blocks holding at least one allowed pair.
    """
    if q is None or k is None:
        raise ValueError("pattern 'topk' needs q and k to score key blocks")
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError("pattern 'topk' needs q [B, H, Q, D] and k [B, Hkv, K, D]")
    heads, kv_heads = q.shape[1], k.shape[1]
    if q.shape[0] != batch or q.shape[2] != q_len or k.shape[0] != batch or k.shape[2] != kv_len:
        raise ValueError("q and k must match the batch, q_len and kv_len of the mask")
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"query heads ({heads}) must be a multiple of kv heads ({kv_heads})")
    assert pattern.top_k is not None
    block_size = pattern.block_size
    device = q.device
    key_valid = torch.ones(batch, kv_len, dtype=torch.bool, device=device)
    if kv_lengths is not None:
        key_valid = torch.arange(kv_len, device=device).view(1, -1) < kv_lengths.view(-1, 1)
    q_pooled = _mean_pool_blocks(q.float(), torch.ones(batch, q_len, device=device), block_size)
    k_pooled = _mean_pool_blocks(k.float(), key_valid.float(), block_size)
    k_pooled = k_pooled.repeat_interleave(heads // kv_heads, dim=1)
    scores = q_pooled @ k_pooled.transpose(-1, -2)
    candidates = candidates.expand_as(scores)
    scores = scores.masked_fill(~candidates, float("-inf"))
    chosen = scores.topk(min(pattern.top_k, scores.shape[-1]), dim=-1).indices
    selected = torch.zeros_like(candidates).scatter_(-1, chosen, True) & candidates

    last_block = (
        (kv_lengths.to(torch.int64) - 1) // block_size
        if kv_lengths is not None
        else torch.full((batch,), (kv_len - 1) // block_size, device=device)
    )
    q_blocks = torch.arange(scores.shape[2], device=device).view(1, -1)
    diagonal = torch.minimum(q_blocks, last_block.view(-1, 1).to(device))
    diagonal = diagonal.view(batch, 1, -1, 1).expand(batch, heads, -1, 1)
    return selected.scatter(-1, diagonal, True)


def _mean_pool_blocks(x: Tensor, valid: Tensor, block_size: int) -> Tensor:
    """Mean of x [B, H, S, D] over the valid positions (valid: [B, S] 0/1) of each block."""
    batch, heads, length, dim = x.shape
    blocks = -(-length // block_size)
    pad = blocks * block_size - length
    weights = torch.nn.functional.pad(valid, (0, pad)).view(batch, 1, blocks, block_size, 1)
    x = torch.nn.functional.pad(x, (0, 0, 0, pad)).view(batch, heads, blocks, block_size, dim)
    total = (x * weights).sum(dim=3)
    count = weights.sum(dim=3).clamp(min=1)
    return total / count


def _counts_and_indices(grid: Tensor) -> tuple[Tensor, Tensor]:
    """Counts [..., QB] and indices [..., QB, KB] of the True blocks of each row, ascending first."""
    counts = grid.sum(dim=-1, dtype=torch.int32)
    indices = torch.argsort((~grid).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return counts, indices


def _expand_blocks(grid: Tensor, block_size: int) -> Tensor:
    """[..., QB, KB] block grid -> [..., QB*bs, KB*bs] element grid."""
    return grid.repeat_interleave(block_size, dim=-2).repeat_interleave(block_size, dim=-1)
