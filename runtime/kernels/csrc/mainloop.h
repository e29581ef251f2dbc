// Mainloop pieces: block lists, ring positions, the TMA producer that fetches each tile's Q
// and its K/V blocks by index into shared-memory rings (completing on mbarriers), and the
// asynchronous warpgroup GEMMs that consume them.
#pragma once

#include <cute/arch/cluster_sm90.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "params.h"
#include "tile_scheduler.h"
#include "tile_traits.h"
#include "trace.h"

namespace sas {

using namespace cute;
using TransactionBarrier = cutlass::arch::ClusterTransactionBarrier;

// Which key block the j-th visit of a query block reads: full blocks first, then partial ones.
struct BlockList {
  const int32_t* full;
  const int32_t* partial;
  int full_count;
  int total;

  CUTE_DEVICE int block(int j) const { return j < full_count ? full[j] : partial[j - full_count]; }
  CUTE_DEVICE bool is_partial(int j) const { return j >= full_count; }
};

// The block list of one tile, counts read from the mask and clamped to the index slots so that
// a bad count cannot read past a row.
CUTE_DEVICE BlockList make_block_list(BlockSparseFwdParams const& p, Tile const& tile) {
  const int64_t b = tile.batch, h = tile.head, m = tile.m_block;
  const int full_count = p.full_kv_num_blocks[b * p.full_num_batch_stride +
                                              h * p.full_num_head_stride +
                                              m * p.full_num_row_stride];
  const int partial_count =
      p.kv_num_blocks[b * p.num_batch_stride + h * p.num_head_stride + m * p.num_row_stride];
  BlockList blocks;
  blocks.full = p.full_kv_indices + b * p.full_idx_batch_stride + h * p.full_idx_head_stride +
                m * p.full_idx_row_stride;
  blocks.partial =
      p.kv_indices + b * p.idx_batch_stride + h * p.idx_head_stride + m * p.idx_row_stride;
  blocks.full_count = max(0, min(full_count, p.full_slots));
  blocks.total = blocks.full_count + max(0, min(partial_count, p.partial_slots));
  return blocks;
}

// A position in a ring of `kStages` buffers: which buffer, and the parity of its barrier phase.
template <int kStages>
struct RingPosition {
  int count = 0;
  CUTE_DEVICE int stage() const { return count % kStages; }
  CUTE_DEVICE int round() const { return count / kStages; }
  CUTE_DEVICE int phase() const { return round() & 1; }
};

using ReleaseBarrier = cutlass::arch::ClusterBarrier;

// Hands a buffer back to the producer; the barrier counts one arrival per consumer warpgroup.
CUTE_DEVICE void release(uint64_t* barrier, bool is_signaller) {
  if (is_signaller) {
    ReleaseBarrier::arrive(barrier);
  }
}

// Hands a K/V buffer back. In a pair both CTAs' loaders write into the slot (each its half of
// the block), so each consumer warpgroup frees it in both CTAs.
template <int kClusterM>
CUTE_DEVICE void release_kv(uint64_t* barrier, bool is_signaller) {
  if constexpr (kClusterM == 1) {
    release(barrier, is_signaller);
  } else {
    CUTE_UNROLL
    for (uint32_t cta = 0; cta < kClusterM; ++cta) {
      ReleaseBarrier::arrive(barrier, cta, is_signaller);
    }
  }
}

// Keeps the compiler from moving shared-memory accesses across an mbarrier wait or arrive (the
// barrier instructions order them in hardware: arrive releases, wait acquires).
CUTE_DEVICE void compiler_fence() { asm volatile("" ::: "memory"); }

// The producer's side of the tile slots: waits for the slot to be free, writes the tile, and
// signals it.
template <class SharedStorage, int kSlots>
CUTE_DEVICE void post_tile(SharedStorage& smem, RingPosition<kSlots>& ring,
                           PostedTile const& posted) {
  const int slot = ring.stage();
  if (ring.round() > 0) {
    ReleaseBarrier::wait(&smem.empty_tile[slot], (ring.round() - 1) & 1);
  }
  compiler_fence();
  smem.tiles[slot] = posted;
  compiler_fence();
  ReleaseBarrier::arrive(&smem.full_tile[slot]);
  ++ring.count;
}

// The readers' side: every consumer thread, and the loader's one thread, reads the posted tile.
// Each consumer thread then frees the slot for its own read (kRelease). One arrival per warp
// after __syncwarp left the other lanes' reads unordered before the next post, as racecheck
// found: in the SASS no warp barrier stood between the reads and the arrival. The loader
// frees the slot later.
template <bool kRelease = true, class SharedStorage, int kSlots>
CUTE_DEVICE PostedTile take_posted_tile(SharedStorage& smem, RingPosition<kSlots>& ring) {
  const int slot = ring.stage();
  ReleaseBarrier::wait(&smem.full_tile[slot], ring.phase());
  compiler_fence();
  const PostedTile posted = smem.tiles[slot];
  compiler_fence();
  if constexpr (kRelease) {
    ReleaseBarrier::arrive(&smem.empty_tile[slot]);
  }
  ++ring.count;
  return posted;
}

// The producer warpgroup's two threads. The scheduler (lane 0 of warp 1) takes the CTA's tiles
// from the schedule, posts each to the consumers and to the loader, and issues its Q, once the
// loader comes to the last block of the tile before (its one slot is free then), so the
// counter's atomic, the tile order and the block counts (each an L2 round trip) and Q's load
// are off the path between two tiles. The loader (lane 0 of warp 0) reads each posted tile and
// issues its listed K/V blocks into the ring, waiting for the consumers to free a buffer
// first; it runs ahead across tile boundaries.
template <class Traits>
struct Producer {
  using SharedStorage = typename Traits::SharedStorage;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kClusterM = Traits::kClusterM;
  static constexpr bool kPaired = kClusterM > 1;

  CUTE_DEVICE static void schedule(KernelArgs<Traits> const& args, TileScheduler const& scheduler,
                                   SharedStorage& smem) {
    const BlockSparseFwdParams& p = args.params;
    Tensor mQ = args.tma_q.get_tma_tensor(shape(Traits::gmem_q(p)));
    Tensor sQ = make_tensor(make_smem_ptr(smem.q.data()), typename Traits::SmemLayoutQ{});
    RingPosition<Traits::kQStages> q_ring;
    RingPosition<Traits::kTileSlots> tile_ring;

    // The first tile is the CTA's own; each next one is taken once this one's Q is issued. A
    // pair of CTAs takes pairs of tiles (2 i and 2 i + 1: the same head, neighbouring query
    // blocks) in the kernel's own order, cluster c the pairs c, c + clusters, ...: both CTAs
    // must load the same blocks in the same order, so no counter and no given order.
    auto first_tile = [&] {
      return kPaired ? 2 * int(blockIdx.x / kClusterM) + int(cute::block_rank_in_cluster())
                     : int(blockIdx.x);
    };
    auto next_tile = [&](int t) {
      return kPaired ? t + int(gridDim.x) : int(gridDim.x) + atomicAdd(p.tile_counter, 1);
    };
    int t = first_tile();
    for (; t < scheduler.num_tiles(); t = next_tile(t)) {
      // A given order is clamped, so that a bad entry repeats a tile rather than leave the tensors.
      const int index = kPaired || p.tile_order == nullptr
                            ? t
                            : min(max(p.tile_order[t], 0), scheduler.num_tiles() - 1);
      const Tile tile = scheduler.tile(index);
      // Both CTAs of a pair read the pair's first list, so that they load the same blocks even
      // when a mask breaks pair_tiles' contract (the output is then wrong, but nothing hangs).
      const BlockList blocks = make_block_list(p, kPaired ? scheduler.tile(index & ~1) : tile);
      const int kv_len =
          p.kv_lengths == nullptr ? p.kv_len : min(p.kv_len, p.kv_lengths[tile.batch]);
      post_tile(smem, tile_ring,
                PostedTile{index, tile, kv_len, blocks.full_count, blocks.total, blocks.full,
                           blocks.partial});
      const int traced_tile = tile_ring.count - 1;
      trace_event(p.trace, traced_tile, kTraceProducerPosted);
      trace_event(p.trace, traced_tile, kTraceBlocks, blocks.total);
      if (blocks.total == 0) {
        continue;
      }
      Tensor gQ = local_tile(mQ(_, _, tile.head, tile.batch), Shape<Int<kBlockM>, Int<kHeadDim>>{},
                             make_coord(tile.m_block, _0{}));  // (M, D)
      auto [tQgQ, tQsQ] = tma_partition(args.tma_q, _0{}, Layout<_1>{}, group_modes<0, 2>(sQ),
                                        group_modes<0, 2>(gQ));
      const int q_stage = q_ring.stage();
      if (q_ring.round() > 0) {
        ReleaseBarrier::wait(&smem.empty_q[q_stage], (q_ring.round() - 1) & 1);
      }
      TransactionBarrier::arrive_and_expect_tx(&smem.full_q[q_stage], Traits::kQBytes);
      copy(args.tma_q.with(smem.full_q[q_stage]), tQgQ, tQsQ(_, q_stage));
      ++q_ring.count;
      trace_event(p.trace, traced_tile, kTraceProducerQIssued);
    }
    // Past the last tile: the loader and the consumers stop.
    post_tile(smem, tile_ring, PostedTile{t, Tile{0, 0, 0}, 0, 0, 0, nullptr, nullptr});
  }

  CUTE_DEVICE static void load(KernelArgs<Traits> const& args, TileScheduler const& scheduler,
                               SharedStorage& smem) {
    const BlockSparseFwdParams& p = args.params;
    Tensor mK = args.tma_k.get_tma_tensor(shape(Traits::gmem_k(p)));
    Tensor mV = args.tma_v.get_tma_tensor(shape(Traits::gmem_v(p)));
    Tensor sK = make_tensor(make_smem_ptr(smem.k.data()), typename Traits::SmemLayoutKV{});
    Tensor sV = make_tensor(make_smem_ptr(smem.v.data()), typename Traits::SmemLayoutKV{});
    RingPosition<Traits::kStages> kv_ring;
    RingPosition<Traits::kTileSlots> tile_ring;

    // The loader frees a tile's slot when it comes to the tile's last block, so the scheduler
    // takes the next tile then (the ring's depth of blocks before the consumers finish this
    // one), not a whole tile early: a tile taken early is held from idle CTAs at the end.
    auto free_slot = [&](int slot) { ReleaseBarrier::arrive(&smem.empty_tile[slot]); };
    CUTE_NO_UNROLL
    for (PostedTile posted = take_posted_tile<false>(smem, tile_ring);
         posted.index < scheduler.num_tiles();
         posted = take_posted_tile<false>(smem, tile_ring)) {
      const int traced_tile = tile_ring.count - 1;  // the tile's number in the CTA
      const int posted_slot = traced_tile % Traits::kTileSlots;
      const BlockList blocks{posted.full, posted.partial, posted.full_count, posted.total};
      if (blocks.total == 0) {
        free_slot(posted_slot);
      }
      const Tile tile = posted.tile;
      const int kv_head = tile.head / (p.heads / p.kv_heads);
      Tensor gK = local_tile(mK(_, _, kv_head, tile.batch), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                             make_coord(_, _0{}));  // (N, D, n_blocks)
      Tensor gV = local_tile(mV(_, _, kv_head, tile.batch), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                             make_coord(_, _0{}));  // (N, D, n_blocks)
      // In a pair, this CTA's share of each block (its rank's half), multicast to both.
      const int rank = kPaired ? int(cute::block_rank_in_cluster()) : 0;
      auto [tKgK, tKsK] = tma_partition(args.tma_k, rank, Layout<Int<kClusterM>>{},
                                        group_modes<0, 2>(sK), group_modes<0, 2>(gK));
      auto [tVgV, tVsV] = tma_partition(args.tma_v, rank, Layout<Int<kClusterM>>{},
                                        group_modes<0, 2>(sV), group_modes<0, 2>(gV));
      // Each load lands in both CTAs of a pair and completes on both CTAs' barriers.
      auto load_block = [&](auto const& tma, uint64_t& full, auto const& source,
                            auto&& destination) {
        if constexpr (kPaired) {
          copy(tma.with(full, uint16_t((1 << kClusterM) - 1)), source, destination);
        } else {
          copy(tma.with(full), source, destination);
        }
      };
      for (int j = 0; j < blocks.total; ++j, ++kv_ring.count) {
        const int stage = kv_ring.stage();
        const int round = kv_ring.round();
        // Out-of-range block indices are harmless: TMA fills what lies outside the tensor with
        // zeros and the mask hides keys past kv_len.
        const int n_block = blocks.block(j);
        if (j == blocks.total - 1) {
          free_slot(posted_slot);
        }
        if (round > 0) {
          ReleaseBarrier::wait(&smem.empty_k[stage], (round - 1) & 1);
        }
        TransactionBarrier::arrive_and_expect_tx(&smem.full_k[stage], Traits::kKVBytes);
        load_block(args.tma_k, smem.full_k[stage], tKgK(_, n_block), tKsK(_, stage));
        if (j == 0) {
          trace_event(p.trace, traced_tile, kTraceProducerK0Issued);
        }
        if (round > 0) {
          ReleaseBarrier::wait(&smem.empty_v[stage], (round - 1) & 1);
        }
        TransactionBarrier::arrive_and_expect_tx(&smem.full_v[stage], Traits::kKVBytes);
        load_block(args.tma_v, smem.full_v[stage], tVgV(_, n_block), tVsV(_, stage));
      }
      trace_event(p.trace, traced_tile, kTraceProducerLastVIssued);
    }
  }
};

// Issues C (+)= A B on the calling warpgroup's tensor cores as one commit group, without
// waiting; the caller waits with warpgroup_wait<N>() and then fences C (and A if registers).
// kARegisters: A is a register fragment (else a shared-memory descriptor view).
template <bool kZeroInit, bool kARegisters, class TiledMma, class TA, class TB, class TC>
CUTE_DEVICE void warpgroup_gemm_issue(TiledMma& tiled_mma, TA&& a, TB const& b, TC& c) {
  if constexpr (kARegisters) {
    warpgroup_fence_operand(a);
  }
  warpgroup_fence_operand(c);
  warpgroup_arrive();
  if constexpr (kZeroInit) {
    tiled_mma.accumulate_ = GMMA::ScaleOut::Zero;
  }
  CUTE_UNROLL
  for (int k = 0; k < size<2>(a); ++k) {
    cute::gemm(tiled_mma, a(_, _, k), b(_, _, k), c);
    tiled_mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
}

// ((2, 2, N/8), MMA_M, MMA_N) accumulator -> ((2, 2, 2), MMA_M, (N/16, MMA_N)): the register
// A-operand layout of a 16-bit WGMMA, so probabilities feed P V without leaving registers.
template <class Layout>
CUTE_HOST_DEVICE constexpr auto accumulator_as_operand_a(Layout const& acc) {
  auto split = logical_divide(get<0>(acc), Shape<Underscore, Underscore, _2>{});
  return make_layout(make_layout(get<0>(split), get<1>(split), get<2, 0>(split)), get<1>(acc),
                     make_layout(get<2, 1>(split), get<2>(acc)));
}

}  // namespace sas
