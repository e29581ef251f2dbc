// Mainloop pieces: the TMA producer that fetches Q once and K/V blocks by index into the
// shared-memory ring (completing on mbarriers), and the warpgroup GEMMs that consume them.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "params.h"

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

using ReleaseBarrier = cutlass::arch::ClusterBarrier;

// The producer: one thread of the producer warpgroup issues every TMA copy of the CTA, Q once,
// then each listed K/V block into the ring, waiting for consumers to free a stage first.
template <class Traits>
struct KVProducer {
  using SharedStorage = typename Traits::SharedStorage;
  static constexpr int kStages = Traits::kStages;

  template <class TmaQ, class TmaK, class TmaV, class TQgQ, class TQsQ, class TKgK, class TKsK,
            class TVgV, class TVsV>
  CUTE_DEVICE static void run(BlockList const& blocks, SharedStorage& smem, TmaQ const& tma_q,
                              TmaK const& tma_k, TmaV const& tma_v, TQgQ const& tQgQ, TQsQ& tQsQ,
                              TKgK const& tKgK, TKsK& tKsK, TVgV const& tVgV, TVsV& tVsV) {
    TransactionBarrier::arrive_and_expect_tx(&smem.barrier_q, Traits::kQBytes);
    copy(tma_q.with(smem.barrier_q), tQgQ, tQsQ);
    for (int j = 0; j < blocks.total; ++j) {
      const int stage = j % kStages;
      const int round = j / kStages;
      // Out-of-range block indices are harmless: TMA fills what lies outside the tensor with
      // zeros and the mask hides keys past kv_len.
      const int n_block = blocks.block(j);
      if (round > 0) {
        ReleaseBarrier::wait(&smem.empty_k[stage], (round - 1) & 1);
      }
      TransactionBarrier::arrive_and_expect_tx(&smem.full_k[stage], Traits::kKVBytes);
      copy(tma_k.with(smem.full_k[stage]), tKgK(_, n_block), tKsK(_, stage));
      if (round > 0) {
        ReleaseBarrier::wait(&smem.empty_v[stage], (round - 1) & 1);
      }
      TransactionBarrier::arrive_and_expect_tx(&smem.full_v[stage], Traits::kKVBytes);
      copy(tma_v.with(smem.full_v[stage]), tVgV(_, n_block), tVsV(_, stage));
    }
  }
};

// C (+)= A B on the calling warpgroup's tensor cores; waits for completion. kARegisters: A is a
// register fragment (else a shared-memory descriptor view).
template <bool kZeroInit, bool kARegisters, class TiledMma, class TA, class TB, class TC>
CUTE_DEVICE void warpgroup_gemm(TiledMma& tiled_mma, TA& a, TB const& b, TC& c) {
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
  warpgroup_wait<0>();
  warpgroup_fence_operand(c);
  if constexpr (kARegisters) {
    warpgroup_fence_operand(a);
  }
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
