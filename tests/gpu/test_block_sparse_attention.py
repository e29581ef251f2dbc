"""The sparse kernel against the float64 reference on a grid of shapes and every pattern."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch.nn import functional
from torch.nn.attention import SDPBackend, sdpa_kernel

from sas_runtime.block_mask import BlockMask, ElementMask, compile_block_mask
from sas_runtime.config import PatternConfig, PatternType
from sas_runtime.kernels import ops
from sas_runtime.kernels.reference import block_sparse_attention_reference, visible_keys

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("kernels_loaded")]

DEVICE = torch.device("cuda")


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    pattern: PatternConfig
    padded: bool = False

    def __str__(self) -> str:
        return self.name


def _pattern(kind: PatternType, **fields: int) -> PatternConfig:
    return PatternConfig(type=kind, block_size=128, **fields)


DENSE = _pattern(PatternType.DENSE)
CASES = [
    Case("dense-256-d128", 1, 2, 2, 256, 256, 128, DENSE),
    Case("dense-ragged-300-d64", 2, 4, 2, 300, 300, 64, DENSE),
    Case("dense-q200-kv700-gqa4", 1, 8, 2, 200, 700, 128, DENSE),
    Case("causal-517-d128", 2, 2, 1, 517, 517, 128, _pattern(PatternType.CAUSAL)),
    Case("causal-1024-d64", 1, 4, 4, 1024, 1024, 64, _pattern(PatternType.CAUSAL)),
    Case("window-700", 1, 2, 2, 700, 700, 128, _pattern(PatternType.WINDOW, window=200)),
    Case(
        "global-window-1000",
        2,
        2,
        1,
        1000,
        1000,
        64,
        _pattern(PatternType.GLOBAL_WINDOW, window=150, global_tokens=128),
    ),
    Case("dilated-1000", 1, 4, 2, 1000, 1000, 128, _pattern(PatternType.DILATED, dilation=3)),
    Case("document-600", 2, 2, 2, 600, 600, 128, _pattern(PatternType.DOCUMENT)),
    Case("topk-900", 1, 4, 1, 900, 900, 64, _pattern(PatternType.TOPK, top_k=2)),
    Case("causal-padded-650", 3, 2, 2, 650, 650, 128, _pattern(PatternType.CAUSAL), padded=True),
]


def _inputs(case: Case, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    def draw(heads: int, length: int) -> torch.Tensor:
        return torch.randn(case.batch, heads, length, case.head_dim, device=DEVICE, dtype=dtype)

    return (
        draw(case.heads, case.q_len),
        draw(case.kv_heads, case.kv_len),
        draw(case.kv_heads, case.kv_len),
    )


def _mask(case: Case, q: torch.Tensor, k: torch.Tensor) -> BlockMask:
    documents = None
    if case.pattern.type is PatternType.DOCUMENT:
        cuts = torch.randint(1, case.kv_len, (case.batch, 3), device=DEVICE)
        positions = torch.arange(case.kv_len, device=DEVICE)
        documents = (positions[None, None, :] >= cuts[:, :, None]).sum(dim=1).to(torch.int32)
    lengths = None
    if case.padded:
        lengths = torch.randint(1, case.kv_len + 1, (case.batch,), device=DEVICE)
    return compile_block_mask(
        case.pattern,
        batch=case.batch,
        q_len=case.q_len,
        kv_len=case.kv_len,
        kv_lengths=lengths,
        document_ids=documents,
        q=q,
        k=k,
        device=DEVICE,
    )


def _random_mask(
    batch: int, heads: int, q_len: int, kv_len: int, density: float, *, paired: bool = False
) -> BlockMask:
    """Random full and partial blocks (partial ones cut by a causal element mask), some rows
    empty. paired: drawn once per pair of query blocks (2 i, 2 i + 1), so that the two rows of
    a pair list the same key blocks, as pair_tiles needs (the causal cut still differs)."""
    q_blocks, kv_blocks = -(-q_len // 128), -(-kv_len // 128)
    rows = -(-q_blocks // 2) if paired else q_blocks
    draw = torch.rand(batch, heads, rows, kv_blocks, device=DEVICE)
    if paired:
        draw = draw.repeat_interleave(2, dim=2)[:, :, :q_blocks]
    visited = draw < density
    visited[:, :, : 2 if paired else 1] = False  # the first row (pair) of every head sees nothing
    partial = visited & (draw < density / 2)
    return BlockMask.from_block_grids(
        partial_blocks=partial,
        full_blocks=visited & ~partial,
        element_mask=ElementMask(causal=True),
        block_size=128,
        q_len=q_len,
        kv_len=kv_len,
    )


def _sdpa_max_error(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask, ref: torch.Tensor
) -> float:
    """cuDNN SDPA's max error on the same problem (memory-efficient SDPA where cuDNN cannot
    take the boolean mask), over rows that see at least one key."""
    visible = visible_keys(mask.to(torch.device("cpu")), batch=q.shape[0], heads=q.shape[1])
    seen = visible.any(dim=-1)
    grouped = q.shape[1] != k.shape[1]
    if bool(visible.all()):
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            out = functional.scaled_dot_product_attention(q, k, v, enable_gqa=grouped)
    else:
        attn_mask = (visible | ~seen[..., None]).to(DEVICE)
        k_full = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v_full = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
            out = functional.scaled_dot_product_attention(q, k_full, v_full, attn_mask=attn_mask)
    return float((out.double().cpu() - ref)[seen].abs().max())


def _check(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask
) -> tuple[float, float, float]:
    out, lse = ops.block_sparse_attention(q, k, v, block_mask=mask)
    torch.cuda.synchronize()
    ref_out, ref_lse = block_sparse_attention_reference(q, k, v, block_mask=mask)
    assert out.shape == q.shape
    assert out.dtype == q.dtype
    assert lse.shape == q.shape[:3]
    assert lse.dtype == torch.float32
    assert bool(torch.isfinite(out).all()), "output has NaN/inf"
    error = out.double().cpu() - ref_out
    rmse = float(error.pow(2).mean().sqrt())
    max_error = float(error.abs().max())
    seen = torch.isfinite(ref_lse)
    lse_cpu = lse.double().cpu()
    assert bool((lse_cpu[~seen] == -torch.inf).all()), "rows that see no key must give -inf"
    assert bool((out.cpu()[~seen] == 0).all()), "rows that see no key must give 0"
    torch.testing.assert_close(lse_cpu[seen], ref_lse[seen], rtol=0, atol=2e-3)
    baseline = _sdpa_max_error(q, k, v, mask, ref_out) if bool(seen.any()) else 0.0
    # Rows whose weight sits on a few keys (test_row_max_climbing_across_blocks) give outputs of
    # the size of V itself, whose rounding to the output dtype alone is above 1e-3 rms.
    rounding = float((ref_out.to(q.dtype).double() - ref_out).pow(2).mean().sqrt())
    assert rmse <= max(1e-3, 1.1 * rounding), f"rmse {rmse:.2e} (rounding alone {rounding:.2e})"
    assert max_error <= 2 * baseline + 1e-6, f"max error {max_error:.2e} vs SDPA {baseline:.2e}"
    return rmse, max_error, baseline


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_patterns_match_reference(case: Case, dtype: torch.dtype) -> None:
    torch.manual_seed(hash(case.name) % 2**31)
    q, k, v = _inputs(case, dtype)
    _check(q, k, v, _mask(case, q, k))


@pytest.mark.parametrize("density", [1.0, 0.5, 0.1])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_random_block_masks_with_empty_rows(density: float, head_dim: int) -> None:
    torch.manual_seed(int(density * 100) + head_dim)
    case = Case("random", 2, 4, 2, 1100, 1100, head_dim, DENSE)
    q, k, v = _inputs(case, torch.bfloat16)
    _check(q, k, v, _random_mask(2, 4, 1100, 1100, density))


@pytest.mark.parametrize("density", [1.0, 0.3])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_many_tiles_per_cta(density: float, head_dim: int) -> None:
    """More tiles (2 x 8 heads x 17 query blocks) than the H100 has SMs, so every persistent CTA
    runs tiles back to back, empty ones among them: checks the hand-over between tiles."""
    torch.manual_seed(int(density * 10) + head_dim)
    case = Case("many-tiles", 2, 8, 4, 2100, 2100, head_dim, DENSE)
    q, k, v = _inputs(case, torch.bfloat16)
    _check(q, k, v, _random_mask(2, 8, 2100, 2100, density))


@pytest.mark.parametrize("head_dim", [64, 128])
def test_global_rows_with_many_tiles(head_dim: int) -> None:
    """2 x 8 heads x 17 query blocks, the first two holding global rows (256 tokens) that visit
    every key block: more tiles than SMs, of very unequal length; whatever order the schedule
    takes them in, every tile must run exactly once."""
    torch.manual_seed(head_dim + 3)
    pattern = _pattern(PatternType.GLOBAL_WINDOW, window=300, global_tokens=256)
    case = Case("global-many-tiles", 2, 8, 2, 2100, 2100, head_dim, pattern)
    q, k, v = _inputs(case, torch.bfloat16)
    _check(q, k, v, _mask(case, q, k))


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("growth", ["steady", "spiky"])
def test_row_max_climbing_across_blocks(head_dim: int, growth: str) -> None:
    """Key blocks scaled so that each row's running max climbs from block to block, by steps
    both smaller and larger than a few powers of two ("steady"), or jumps once and falls back
    ("spiky"): the online softmax's rescaling, and any rescale it skips, must not show."""
    torch.manual_seed(head_dim + len(growth))
    case = Case("climbing", 1, 4, 4, 300, 2048, head_dim, DENSE)
    q, k, v = _inputs(case, torch.bfloat16)
    blocks = case.kv_len // 128
    if growth == "steady":
        scales = [1.0 + 1.5 * b for b in range(blocks)]
    else:
        scales = [1.0] * blocks
        scales[blocks // 2] = 12.0
    per_key = torch.tensor(scales, device=DEVICE).repeat_interleave(128)
    k = (k.float() * per_key[None, None, :, None]).to(k.dtype)
    _check(q, k, v, _mask(case, q, k))


def test_same_inputs_give_identical_outputs() -> None:
    torch.manual_seed(7)
    case = Case("repeat", 2, 8, 2, 2048, 2048, 128, DENSE)
    q, k, v = _inputs(case, torch.bfloat16)
    mask = _random_mask(2, 8, 2048, 2048, 0.5)
    first = ops.block_sparse_attention(q, k, v, block_mask=mask)
    for _ in range(3):
        again = ops.block_sparse_attention(q, k, v, block_mask=mask)
        assert torch.equal(first[0], again[0])
        assert torch.equal(first[1], again[1])


def test_non_contiguous_bshd_inputs() -> None:
    torch.manual_seed(3)
    q, k, v = (
        torch.randn(2, 384, 4, 128, device=DEVICE, dtype=torch.bfloat16).transpose(1, 2)
        for _ in range(3)
    )
    mask = compile_block_mask(
        _pattern(PatternType.CAUSAL), batch=2, q_len=384, kv_len=384, device=DEVICE
    )
    _check(q, k, v, mask)


def test_opcheck() -> None:
    torch.manual_seed(5)
    case = Case("opcheck", 1, 4, 2, 300, 300, 64, DENSE)
    q, k, v = _inputs(case, torch.float16)
    mask = _mask(Case("c", 1, 4, 2, 300, 300, 64, _pattern(PatternType.CAUSAL)), q, k)
    args = _op_args(q, k, v, mask, scale=0.125, order=None)
    torch.library.opcheck(torch.ops.sas.block_sparse_attention_fwd.default, args)


def test_compiles_fullgraph() -> None:
    torch.manual_seed(6)
    case = Case("compile", 1, 2, 2, 256, 256, 128, DENSE)
    q, k, v = _inputs(case, torch.bfloat16)
    mask = _mask(case, q, k)

    @torch.compile(fullgraph=True)
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return ops.block_sparse_attention(q, k, v, block_mask=mask)[0] * 2

    eager = ops.block_sparse_attention(q, k, v, block_mask=mask)[0] * 2
    torch.testing.assert_close(attend(q, k, v), eager, rtol=0, atol=0)


def _op_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockMask,
    *,
    scale: float,
    order: torch.Tensor | None,
    carry: bool = False,
    pairs: bool = False,
) -> tuple[object, ...]:
    """The raw op's arguments: no document ids or key lengths, causal, no window or global rows."""
    return (
        q,
        k,
        v,
        mask.kv_num_blocks,
        mask.kv_indices,
        mask.full_kv_num_blocks,
        mask.full_kv_indices,
        None,
        None,
        scale,
        True,
        -1,
        0,
        order,
        carry,
        pairs,
    )


def _op_with_order(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask, order: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    result: tuple[torch.Tensor, torch.Tensor] = torch.ops.sas.block_sparse_attention_fwd(
        *_op_args(q, k, v, mask, scale=0.1, order=order)
    )
    return result


def test_any_tile_order_gives_the_same_bits() -> None:
    """Each tile's result does not depend on which CTA runs it or when: the kernel's own order,
    long tiles first and a random permutation agree bit for bit (2 x 8 heads x 17 blocks)."""
    torch.manual_seed(11)
    case = Case("orders", 2, 8, 2, 2100, 2100, 128, DENSE)
    q, k, v = _inputs(case, torch.bfloat16)
    mask = _random_mask(2, 8, 2100, 2100, 0.4)
    tiles = 2 * 8 * 17
    own = _op_with_order(q, k, v, mask, None)
    long_first = ops.long_tiles_first_order(mask, batch=2, heads=8, q_blocks=17)
    assert sorted(long_first.tolist()) == list(range(tiles))
    for order in (long_first, torch.randperm(tiles, device=DEVICE).to(torch.int32)):
        again = _op_with_order(q, k, v, mask, order)
        assert torch.equal(own[0], again[0])
        assert torch.equal(own[1], again[1])


def test_long_tiles_first_under_graph_capture_and_compile() -> None:
    """The wrapper orders tiles here (272 tiles, 17 key blocks): a graph replay and a compiled
    call, which compute the order inside the graph, match the eager call."""
    torch.manual_seed(12)
    case = Case("ordered", 2, 8, 2, 2100, 2100, 64, DENSE)
    q, k, v = _inputs(case, torch.bfloat16)
    mask = _random_mask(2, 8, 2100, 2100, 0.4)
    assert ops._tile_order(mask, q, k.shape[2]) is not None
    eager = ops.block_sparse_attention(q, k, v, block_mask=mask)

    side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ops.block_sparse_attention(q, k, v, block_mask=mask)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        replayed = ops.block_sparse_attention(q, k, v, block_mask=mask)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(replayed[0], eager[0])

    @torch.compile(fullgraph=True)
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return ops.block_sparse_attention(q, k, v, block_mask=mask)[0]

    assert torch.equal(attend(q, k, v), eager[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("density", [1.0, 0.3])
def test_carried_last_product_gives_the_plain_kernels_result(
    density: float, head_dim: int, dtype: torch.dtype
) -> None:
    """Carrying each tile's last P V into the next tile (and the rescale it skips when no row's
    max moved) gives what the plain kernel gives: the LSE bit for bit, the output within a unit
    in the last place, over more tiles than SMs with empty ones among them (2 x 8 heads x 17
    query blocks, the first of each row empty)."""
    torch.manual_seed(int(density * 10) + head_dim)
    case = Case("carry", 2, 8, 4, 2100, 2100, head_dim, DENSE)
    q, k, v = _inputs(case, dtype)
    mask = _random_mask(2, 8, 2100, 2100, density)
    plain = torch.ops.sas.block_sparse_attention_fwd(
        *_op_args(q, k, v, mask, scale=0.1, order=None)
    )
    carried = torch.ops.sas.block_sparse_attention_fwd(
        *_op_args(q, k, v, mask, scale=0.1, order=None, carry=True)
    )
    assert torch.equal(carried[1], plain[1])
    ulp = torch.finfo(dtype).eps
    torch.testing.assert_close(carried[0], plain[0], rtol=ulp, atol=0)


def test_long_d128_keys_carry_the_last_product_and_match_the_reference() -> None:
    """32,768 keys at D128: the wrapper carries each tile's last product; checked against the
    float64 reference like every other case (a random mask, some rows empty)."""
    assert ops.carries_last_product(128, 32768 // 128)
    torch.manual_seed(13)
    case = Case("long-keys", 1, 2, 2, 700, 32768, 128, DENSE)
    q, k, v = _inputs(case, torch.bfloat16)
    _check(q, k, v, _random_mask(1, 2, 700, 32768, 0.3))


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("carry", [False, True])
def test_runs_of_empty_tiles(head_dim: int, carry: bool) -> None:
    """Seven of every eight query blocks see no key, over 2 x 32 heads x 17 query blocks (about
    eight tiles per CTA): CTAs meet runs of empty tiles, which load nothing, right after a tile
    that still has loads in flight. Both schedules finish and match a float32 reference."""
    torch.manual_seed(head_dim + int(carry))
    case = Case("empty-runs", 2, 32, 8, 2100, 2100, head_dim, DENSE)
    q, k, v = _inputs(case, torch.bfloat16)
    blocks = -(-case.q_len // 128)
    rows = (torch.arange(blocks, device=DEVICE) % 8 == 3)[None, None, :, None]
    visited = (torch.rand(2, 32, blocks, blocks, device=DEVICE) < 0.5) & rows
    mask = BlockMask.from_block_grids(
        partial_blocks=torch.zeros_like(visited),
        full_blocks=visited,
        element_mask=ElementMask(),
        block_size=128,
        q_len=case.q_len,
        kv_len=case.kv_len,
    )
    out, lse = ops.block_sparse_attention(q, k, v, block_mask=mask, carry_last_product=carry)
    visible = visible_keys(mask.to(torch.device("cpu")), batch=2, heads=32).to(DEVICE)
    seen = visible.any(dim=-1)
    group = case.heads // case.kv_heads
    k_full, v_full = (t.repeat_interleave(group, dim=1).float() for t in (k, v))
    scores = (q.float() @ k_full.transpose(-1, -2)) * head_dim**-0.5
    scores = scores.masked_fill(~visible, -torch.inf)
    ref_lse = torch.logsumexp(scores, dim=-1)
    ref = torch.softmax(scores.masked_fill(~seen[..., None], 0.0), dim=-1) @ v_full
    assert bool(seen.any())
    assert not bool(seen.all())
    assert bool((out[~seen] == 0).all())
    assert bool((lse[~seen] == -torch.inf).all())
    torch.testing.assert_close(lse[seen], ref_lse[seen], rtol=0, atol=2e-3)
    torch.testing.assert_close(out.float()[seen], ref[seen], rtol=0, atol=2e-2)


@pytest.mark.parametrize("carry", [False, True])
@pytest.mark.parametrize("density", [1.0, 0.3])
def test_paired_tiles_give_the_plain_kernels_bits(density: float, carry: bool) -> None:
    """CTAs in pairs, each loading half of every K/V block for both, give the plain kernel's
    output and LSE bit for bit (the same blocks in the same order), over more pairs than the
    grid's clusters (2 x 32 heads x 18 query blocks), empty pairs among them."""
    torch.manual_seed(int(density * 10) + int(carry))
    case = Case("pairs", 2, 32, 8, 2304, 2100, 128, DENSE)
    q, k, v = _inputs(case, torch.bfloat16)
    mask = _random_mask(2, 32, 2304, 2100, density, paired=True)
    assert ops.pairs_share_blocks(mask)
    plain = torch.ops.sas.block_sparse_attention_fwd(
        *_op_args(q, k, v, mask, scale=0.1, order=None, carry=carry)
    )
    paired = torch.ops.sas.block_sparse_attention_fwd(
        *_op_args(q, k, v, mask, scale=0.1, order=None, carry=carry, pairs=True)
    )
    assert torch.equal(paired[1], plain[1])
    assert torch.equal(paired[0], plain[0])


def test_paired_tiles_on_a_dense_mask_match_the_reference() -> None:
    """The dense mask, the case pair_tiles is for, through the wrapper against the float64
    reference, with the key tail cut inside a block."""
    torch.manual_seed(21)
    case = Case("pairs-dense", 1, 8, 8, 1024, 1000, 128, DENSE)
    q, k, v = _inputs(case, torch.bfloat16)
    mask = _mask(case, q, k)
    assert ops.pairs_share_blocks(mask)
    out, lse = ops.block_sparse_attention(q, k, v, block_mask=mask, pair_tiles=True)
    plain_out, plain_lse = ops.block_sparse_attention(q, k, v, block_mask=mask)
    assert torch.equal(lse, plain_lse)
    assert torch.equal(out, plain_out)
    _check(q, k, v, mask)


@pytest.mark.parametrize(
    ("head_dim", "q_len", "order", "message"),
    [
        (64, 256, False, "head_dim 128"),
        (128, 384, False, "even count"),
        (128, 256, True, "no tile_order"),
    ],
)
def test_the_kernel_refuses_pairs_it_cannot_run(
    head_dim: int, q_len: int, order: bool, message: str
) -> None:
    case = Case("pairs-refused", 1, 1, 1, q_len, q_len, head_dim, DENSE)
    q, k, v = _inputs(case, torch.bfloat16)
    mask = _mask(case, q, k)
    tiles = torch.arange(-(-q_len // 128), dtype=torch.int32, device=DEVICE) if order else None
    with pytest.raises(RuntimeError, match=message):
        torch.ops.sas.block_sparse_attention_fwd(
            *_op_args(q, k, v, mask, scale=0.1, order=tiles, pairs=True)
        )


@pytest.mark.parametrize(("batch", "heads"), [(0, 4), (2, 0)])
def test_no_tiles_give_empty_outputs(batch: int, heads: int) -> None:
    """An empty batch (or no heads) launches nothing and returns empty tensors, not a launch
    error."""
    q = torch.randn(batch, heads, 256, 128, device=DEVICE, dtype=torch.bfloat16)
    k = torch.randn(batch, heads or 1, 256, 128, device=DEVICE, dtype=q.dtype)
    mask = torch.zeros(batch, heads, 2, dtype=torch.int32, device=DEVICE)
    indices = torch.zeros(batch, heads, 2, 2, dtype=torch.int32, device=DEVICE)
    out, lse = torch.ops.sas.block_sparse_attention_fwd(
        q, k, k, mask, indices, mask, indices, None, None, 0.1, False, -1, 0
    )
    assert out.shape == q.shape
    assert lse.shape == q.shape[:3]
