"""Every pattern's block mask, element by element, against a boolean mask written out plainly."""

from __future__ import annotations

import warnings
from typing import Literal

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.nn.attention.flex_attention import flex_attention

from sas_runtime.attention.backend import AttentionMetadata
from sas_runtime.attention.reference import ReferenceBackend
from sas_runtime.block_mask import BlockMask, compile_block_mask, pattern_needs_scores
from sas_runtime.config import PatternConfig, PatternType

BlockSize = Literal[64, 128]
BLOCK_SIZES: st.SearchStrategy[BlockSize] = st.sampled_from([64, 128])
LENGTHS = st.integers(min_value=1, max_value=300)


def key_padding(lengths: Tensor | None, batch: int, q_len: int, kv_len: int) -> Tensor:
    """[B, Q, K]: True where the key is not padding."""
    columns = torch.arange(kv_len).view(1, 1, kv_len)
    if lengths is None:
        return torch.ones(batch, q_len, kv_len, dtype=torch.bool)
    return (columns < lengths.view(-1, 1, 1)).expand(batch, q_len, kv_len)


def band(q_len: int, kv_len: int, below: int, above: int) -> Tensor:
    """[Q, K]: True on the diagonals from `below` under to `above` over the main one."""
    return torch.ones(q_len, kv_len, dtype=torch.bool).triu(-below).tril(above)


def expand_blocks(grid: Tensor, block_size: int, q_len: int, kv_len: int) -> Tensor:
    """Block grid [..., QB, KB] -> element grid [..., Q, K]."""
    rows = grid.repeat_interleave(block_size, dim=-2)
    return rows.repeat_interleave(block_size, dim=-1)[..., :q_len, :kv_len]


def check_layout_and_blocks(mask: BlockMask, expected: Tensor) -> None:
    """`expected` [B, H or 1, Q, K]: the mask's dense form equals it, every full block is
    entirely allowed, every partial block partly, every skipped block not at all, and the
    count/index tensors list exactly the grids' blocks in ascending order."""
    batch = max(mask.full_blocks.shape[0], expected.shape[0])
    heads = max(mask.full_blocks.shape[1], expected.shape[1])
    expected = expected.expand(batch, heads, -1, -1)
    assert torch.equal(mask.to_dense().expand_as(expected), expected)

    bs = mask.block_size
    q_blocks, kv_blocks = -(-mask.q_len // bs), -(-mask.kv_len // bs)
    assert mask.full_blocks.shape[2:] == (q_blocks, kv_blocks)
    padded = torch.zeros(*expected.shape[:2], q_blocks * bs, kv_blocks * bs, dtype=torch.bool)
    padded[..., : mask.q_len, : mask.kv_len] = expected
    real_rows = torch.zeros(q_blocks * bs, dtype=torch.bool)
    real_rows[: mask.q_len] = True
    tiles = padded.view(*expected.shape[:2], q_blocks, bs, kv_blocks, bs)
    rows = real_rows.view(1, 1, q_blocks, bs, 1, 1)
    any_allowed = (tiles & rows).any(dim=5).any(dim=3)
    all_allowed = (tiles | ~rows).all(dim=5).all(dim=3)
    full = mask.full_blocks.expand_as(all_allowed)
    partial = mask.partial_blocks.expand_as(all_allowed)
    assert torch.equal(full, all_allowed)
    assert torch.equal(partial, any_allowed & ~all_allowed)

    for counts, indices, grid in (
        (mask.kv_num_blocks, mask.kv_indices, mask.partial_blocks),
        (mask.full_kv_num_blocks, mask.full_kv_indices, mask.full_blocks),
    ):
        assert counts.dtype == indices.dtype == torch.int32
        assert counts.shape == grid.shape[:3]
        assert indices.shape == grid.shape
        assert torch.equal(counts, grid.sum(dim=-1, dtype=torch.int32))
        assert torch.equal(indices.sort(dim=-1).values, torch.arange(kv_blocks).expand_as(indices))
        for position in torch.cartesian_prod(*(torch.arange(n) for n in counts.shape)):
            b, h, row = position.tolist()
            listed = indices[b, h, row, : counts[b, h, row]].tolist()
            assert listed == sorted(listed)
            assert listed == grid[b, h, row].nonzero().flatten().tolist()


@st.composite
def padded_shapes(draw: st.DrawFn) -> tuple[int, int, int, Tensor | None]:
    batch = draw(st.integers(min_value=1, max_value=3))
    q_len, kv_len = draw(LENGTHS), draw(LENGTHS)
    lengths = draw(
        st.none()
        | st.lists(st.integers(1, kv_len), min_size=batch, max_size=batch).map(torch.tensor)
    )
    return batch, q_len, kv_len, lengths


@given(shape=padded_shapes(), block_size=BLOCK_SIZES)
@settings(max_examples=40, deadline=None)
def test_dense_pattern_allows_every_real_key(
    shape: tuple[int, int, int, Tensor | None], block_size: BlockSize
) -> None:
    batch, q_len, kv_len, lengths = shape
    mask = compile_block_mask(
        PatternConfig(type=PatternType.DENSE, block_size=block_size),
        batch=batch,
        q_len=q_len,
        kv_len=kv_len,
        kv_lengths=lengths,
    )
    check_layout_and_blocks(mask, key_padding(lengths, batch, q_len, kv_len).unsqueeze(1))


@given(shape=padded_shapes(), block_size=BLOCK_SIZES)
@settings(max_examples=40, deadline=None)
def test_causal_pattern_allows_keys_at_or_before_the_query(
    shape: tuple[int, int, int, Tensor | None], block_size: BlockSize
) -> None:
    batch, q_len, kv_len, lengths = shape
    mask = compile_block_mask(
        PatternConfig(type=PatternType.CAUSAL, block_size=block_size),
        batch=batch,
        q_len=q_len,
        kv_len=kv_len,
        kv_lengths=lengths,
    )
    lower_triangle = torch.ones(q_len, kv_len, dtype=torch.bool).tril()
    expected = lower_triangle & key_padding(lengths, batch, q_len, kv_len)
    check_layout_and_blocks(mask, expected.unsqueeze(1))


@given(shape=padded_shapes(), block_size=BLOCK_SIZES, window=st.integers(1, 320))
@settings(max_examples=40, deadline=None)
def test_window_pattern_allows_keys_within_the_radius(
    shape: tuple[int, int, int, Tensor | None], block_size: BlockSize, window: int
) -> None:
    batch, q_len, kv_len, lengths = shape
    mask = compile_block_mask(
        PatternConfig(type=PatternType.WINDOW, block_size=block_size, window=window),
        batch=batch,
        q_len=q_len,
        kv_len=kv_len,
        kv_lengths=lengths,
    )
    expected = band(q_len, kv_len, window, window) & key_padding(lengths, batch, q_len, kv_len)
    check_layout_and_blocks(mask, expected.unsqueeze(1))


@given(
    shape=padded_shapes(),
    block_size=BLOCK_SIZES,
    window=st.integers(1, 320),
    global_blocks=st.integers(1, 3),
)
@settings(max_examples=40, deadline=None)
def test_global_window_pattern_adds_leading_tokens_both_ways(
    shape: tuple[int, int, int, Tensor | None],
    block_size: BlockSize,
    window: int,
    global_blocks: int,
) -> None:
    batch, q_len, kv_len, lengths = shape
    global_tokens = global_blocks * block_size
    mask = compile_block_mask(
        PatternConfig(
            type=PatternType.GLOBAL_WINDOW,
            block_size=block_size,
            window=window,
            global_tokens=global_tokens,
        ),
        batch=batch,
        q_len=q_len,
        kv_len=kv_len,
        kv_lengths=lengths,
    )
    allowed = band(q_len, kv_len, window, window)
    allowed[:global_tokens, :] = True
    allowed[:, :global_tokens] = True
    expected = allowed & key_padding(lengths, batch, q_len, kv_len)
    check_layout_and_blocks(mask, expected.unsqueeze(1))


@given(shape=padded_shapes(), block_size=BLOCK_SIZES, dilation=st.integers(2, 4))
@settings(max_examples=40, deadline=None)
def test_dilated_pattern_visits_every_nth_key_block_and_the_diagonal(
    shape: tuple[int, int, int, Tensor | None], block_size: BlockSize, dilation: int
) -> None:
    batch, q_len, kv_len, lengths = shape
    mask = compile_block_mask(
        PatternConfig(type=PatternType.DILATED, block_size=block_size, dilation=dilation),
        batch=batch,
        q_len=q_len,
        kv_len=kv_len,
        kv_lengths=lengths,
    )
    q_blocks, kv_blocks = -(-q_len // block_size), -(-kv_len // block_size)
    chosen = torch.tensor(
        [[kb % dilation == 0 or kb == qb for kb in range(kv_blocks)] for qb in range(q_blocks)]
    )
    expected = expand_blocks(chosen, block_size, q_len, kv_len) & key_padding(
        lengths, batch, q_len, kv_len
    )
    check_layout_and_blocks(mask, expected.unsqueeze(1))


@st.composite
def documents(draw: st.DrawFn) -> Tensor:
    """[B, S] document ids: sorted runs (packed sequences) or arbitrary ids."""
    batch = draw(st.integers(1, 2))
    length = draw(LENGTHS)
    rows = []
    for _ in range(batch):
        if draw(st.booleans()):
            cuts = sorted(draw(st.lists(st.integers(1, length), max_size=5)))
            rows.append([sum(position >= cut for cut in cuts) for position in range(length)])
        else:
            rows.append(draw(st.lists(st.integers(0, 2), min_size=length, max_size=length)))
    return torch.tensor(rows)


@given(document_ids=documents(), block_size=BLOCK_SIZES, data=st.data())
@settings(max_examples=40, deadline=None)
def test_document_pattern_stays_inside_each_document(
    document_ids: Tensor, block_size: BlockSize, data: st.DataObject
) -> None:
    batch, length = document_ids.shape
    lengths = data.draw(
        st.none()
        | st.lists(st.integers(1, length), min_size=batch, max_size=batch).map(torch.tensor)
    )
    mask = compile_block_mask(
        PatternConfig(type=PatternType.DOCUMENT, block_size=block_size),
        batch=batch,
        q_len=length,
        kv_len=length,
        kv_lengths=lengths,
        document_ids=document_ids,
    )
    same_document = document_ids.unsqueeze(2) == document_ids.unsqueeze(1)
    expected = same_document & key_padding(lengths, batch, length, length)
    check_layout_and_blocks(mask, expected.unsqueeze(1))


def explicit_topk_blocks(
    q: Tensor, k: Tensor, lengths: Tensor | None, block_size: int, top_k: int
) -> Tensor:
    """[B, H, QB, KB], block by block: mean of each query block and of each block's real keys,
    their dot products, the top_k best key blocks holding a real key, plus the diagonal block
    (the last real key block when the diagonal lies past the keys)."""
    batch, heads, q_len, _ = q.shape
    kv_len = k.shape[2]
    group = heads // k.shape[1]
    q_blocks, kv_blocks = -(-q_len // block_size), -(-kv_len // block_size)
    chosen = torch.zeros(batch, heads, q_blocks, kv_blocks, dtype=torch.bool)
    for b in range(batch):
        real_keys = kv_len if lengths is None else int(lengths[b])
        for h in range(heads):
            for qb in range(q_blocks):
                q_mean = q[b, h, qb * block_size : (qb + 1) * block_size].mean(dim=0)
                scored = []
                for kb in range(kv_blocks):
                    keys = k[b, h // group, kb * block_size : min((kb + 1) * block_size, real_keys)]
                    if len(keys):
                        scored.append((float(q_mean @ keys.mean(dim=0)), kb))
                for _, kb in sorted(scored, reverse=True)[:top_k]:
                    chosen[b, h, qb, kb] = True
                chosen[b, h, qb, min(qb, (real_keys - 1) // block_size)] = True
    return chosen


@given(
    shape=padded_shapes(),
    block_size=BLOCK_SIZES,
    top_k=st.integers(1, 3),
    kv_heads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=30, deadline=None)
def test_topk_pattern_keeps_the_best_scored_key_blocks(
    shape: tuple[int, int, int, Tensor | None],
    block_size: BlockSize,
    top_k: int,
    kv_heads: int,
    seed: int,
) -> None:
    batch, q_len, kv_len, lengths = shape
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, 2 * kv_heads, q_len, 8, generator=generator, dtype=torch.float64)
    k = torch.randn(batch, kv_heads, kv_len, 8, generator=generator, dtype=torch.float64)
    pattern = PatternConfig(type=PatternType.TOPK, block_size=block_size, top_k=top_k)
    assert pattern_needs_scores(pattern)
    mask = compile_block_mask(
        pattern, batch=batch, q_len=q_len, kv_len=kv_len, kv_lengths=lengths, q=q, k=k
    )
    chosen = explicit_topk_blocks(q, k, lengths, block_size, top_k)
    expected = expand_blocks(chosen, block_size, q_len, kv_len) & key_padding(
        lengths, batch, q_len, kv_len
    ).unsqueeze(1)
    check_layout_and_blocks(mask, expected)
    assert bool((mask.to_dense().any(dim=-1)).all()), "every query row keeps a key"


def test_masks_broadcast_over_heads_except_topk() -> None:
    mask = compile_block_mask(
        PatternConfig(type=PatternType.CAUSAL), batch=3, q_len=300, kv_len=300
    )
    assert mask.full_blocks.shape == (1, 1, 3, 3)
    padded = compile_block_mask(
        PatternConfig(), batch=3, q_len=300, kv_len=300, kv_lengths=torch.tensor([300, 20, 1])
    )
    assert padded.full_blocks.shape == (3, 1, 3, 3)


def test_dense_mask_over_whole_blocks_has_no_partial_blocks() -> None:
    mask = compile_block_mask(PatternConfig(block_size=64), batch=1, q_len=256, kv_len=256)
    assert int(mask.kv_num_blocks.sum()) == 0
    assert torch.equal(mask.full_kv_num_blocks, torch.full((1, 1, 4), 4, dtype=torch.int32))
    assert mask.density == 1.0


@pytest.mark.parametrize(
    ("pattern", "kwargs", "message"),
    [
        (PatternConfig(type=PatternType.DOCUMENT), {}, "needs document_ids"),
        (
            PatternConfig(type=PatternType.DOCUMENT),
            {"document_ids": torch.zeros(2, 5, dtype=torch.int32)},
            "must have shape",
        ),
        (
            PatternConfig(type=PatternType.DOCUMENT),
            {"document_ids": torch.zeros(1, 10)},
            "must be integers",
        ),
        (PatternConfig(), {"document_ids": torch.zeros(1, 10, dtype=torch.int32)}, "apply to"),
        (PatternConfig(type=PatternType.TOPK, top_k=2), {}, "needs q and k"),
        (PatternConfig(), {"kv_lengths": torch.tensor([11])}, "must lie in"),
        (PatternConfig(), {"kv_lengths": torch.tensor([3, 4])}, "must have shape"),
    ],
)
def test_inputs_that_cannot_carry_the_pattern_are_refused(
    pattern: PatternConfig, kwargs: dict[str, Tensor], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        compile_block_mask(pattern, batch=1, q_len=10, kv_len=10, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "pattern",
    [
        PatternConfig(type=PatternType.CAUSAL, block_size=64),
        PatternConfig(type=PatternType.GLOBAL_WINDOW, block_size=64, window=50, global_tokens=64),
        PatternConfig(type=PatternType.DILATED, block_size=64, dilation=3),
    ],
)
def test_torch_flex_attention_runs_our_mask(pattern: PatternConfig) -> None:
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 300, 16, generator=generator) for _ in range(3))
    mask = compile_block_mask(
        pattern, batch=2, q_len=300, kv_len=300, kv_lengths=torch.tensor([300, 170])
    )
    flex_mask = mask.to_flex_attention()
    assert torch.equal(flex_mask.kv_num_blocks, mask.kv_num_blocks)
    assert flex_mask.full_kv_indices is not None
    assert torch.equal(flex_mask.full_kv_indices, mask.full_kv_indices)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        flex_out = flex_attention(q, k, v, block_mask=flex_mask)
    reference = ReferenceBackend().forward(q, k, v, AttentionMetadata(block_mask=mask)).out
    assert isinstance(flex_out, Tensor)
    torch.testing.assert_close(flex_out, reference, atol=1e-5, rtol=1e-5)


def test_to_moves_every_tensor_and_keeps_the_mask() -> None:
    mask = compile_block_mask(
        PatternConfig(type=PatternType.DOCUMENT, block_size=64),
        batch=2,
        q_len=90,
        kv_len=90,
        kv_lengths=torch.tensor([90, 40]),
        document_ids=(torch.arange(90) // 30).expand(2, 90),
    )
    moved = mask.to(torch.device("meta"))
    tensors = [
        moved.kv_num_blocks,
        moved.kv_indices,
        moved.full_kv_num_blocks,
        moved.full_kv_indices,
        moved.partial_blocks,
        moved.full_blocks,
        moved.element_mask.kv_lengths,
        moved.element_mask.document_ids,
    ]
    assert all(t is not None and t.device.type == "meta" for t in tensors)
    assert (moved.block_size, moved.q_len, moved.kv_len) == (64, 90, 90)
    assert torch.equal(mask.to(torch.device("cpu")).to_dense(), mask.to_dense())


@pytest.mark.parametrize(
    ("pattern", "allowed"),
    [
        (PatternConfig(type=PatternType.CAUSAL, block_size=64), band(1500, 1300, 1500, 0)),
        (
            PatternConfig(type=PatternType.WINDOW, block_size=128, window=300),
            band(1500, 1300, 300, 300),
        ),
    ],
    ids=["causal", "window"],
)
def test_long_sequences_classify_exactly(pattern: PatternConfig, allowed: Tensor) -> None:
    lengths = torch.tensor([1300, 777])
    mask = compile_block_mask(pattern, batch=2, q_len=1500, kv_len=1300, kv_lengths=lengths)
    expected = allowed & key_padding(lengths, 2, 1500, 1300)
    check_layout_and_blocks(mask, expected.unsqueeze(1))
    assert 0.0 < mask.density < 1.0
