// Tile traits of the block-sparse forward: tile shapes, shared-memory layouts, the two warpgroup
// MMAs (S = Q K^T from shared memory, O += P V with P in registers) and the TMA descriptors.
#pragma once

#include <cute/atom/copy_atom.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include <type_traits>

#include "params.h"
#include "tile_scheduler.h"

namespace sas {

using namespace cute;

template <DType kDType>
struct ElementOf;
template <>
struct ElementOf<DType::kBFloat16> {
  using type = cutlass::bfloat16_t;
};
template <>
struct ElementOf<DType::kFloat16> {
  using type = cutlass::half_t;
};

// kClusterM_ 2: CTAs run in clusters of two that take the two query blocks of a pair (same
// head, same key blocks) together, each loading half of every K/V block and multicasting it
// into both CTAs, so the L2 serves each block once per pair (FlashAttention 3's ClusterM = 2
// for non-causal D >= 128).
template <DType kDType_, int kHeadDim_, int kClusterM_ = 1>
struct TileTraits {
  using Element = typename ElementOf<kDType_>::type;
  using ElementAccum = float;

  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kClusterM = kClusterM_;
  static_assert(kClusterM == 1 || kClusterM == 2, "CTAs run alone or in pairs");
  static constexpr int kBlockM = 128;  // query rows per CTA, 64 per consumer warpgroup
  static constexpr int kBlockN = 128;  // keys per mask block
  static constexpr int kStages = kHeadDim <= 64 ? 3 : 2;  // K/V ring depth
  static constexpr int kWarpgroups = kBlockM / 64;  // consumer warpgroups
  static constexpr int kConsumerThreads = 128 * kWarpgroups;
  static constexpr int kThreads = kConsumerThreads + 128;  // + one producer warpgroup
  // setmaxnreg budgets: the producer only issues TMA; consumers hold S, P and O fragments.
  static constexpr int kProducerRegisters = 24;
  static constexpr int kConsumerRegisters = 240;
  // setmaxnreg.inc waits until the CTA's freed registers cover the request, so the budgets must
  // fit in what the CTA is launched with (168 per thread at 384 threads), not in 64 K: 48/232
  // asks for 65,536 of 64,512 and every consumer waits forever.
  static constexpr int kLaunchRegisters = 65536 / kThreads / 8 * 8;
  static_assert(kProducerRegisters * 128 + kConsumerRegisters * kConsumerThreads <=
                    kLaunchRegisters * kThreads,
                "setmaxnreg budgets exceed the CTA's registers");
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head dims 64 and 128 are instantiated");

  using TileShapeQK = Shape<Int<kBlockM>, Int<kBlockN>, Int<kHeadDim>>;  // (M, N, K=D)
  using TileShapePV = Shape<Int<kBlockM>, Int<kHeadDim>, Int<kBlockN>>;  // (M, N=D, K)
  using WarpgroupLayout = Layout<Shape<Int<kWarpgroups>, _1, _1>>;

  using TiledMmaQK = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, ElementAccum, Shape<_64, Int<kBlockN>, Int<kHeadDim>>>(),
      WarpgroupLayout{}));
  using TiledMmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, ElementAccum, Shape<_64, Int<kHeadDim>, Int<kBlockN>>,
                           GMMA::Major::K, GMMA::Major::MN>(),
      WarpgroupLayout{}));

  static constexpr int kQStages = 2;  // the next tile's Q loads while this tile finishes
  // Tiles posted by the scheduler, not yet read by all: one, so it takes each tile once the
  // loader comes to the last block of the one before (Producer::load frees the slot then).
  static constexpr int kTileSlots = 1;
  // Head dims of 64 and 128 16-bit elements fill whole 128-byte swizzle rows.
  using SmemLayoutQ = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                             Shape<Int<kBlockM>, Int<kHeadDim>, Int<kQStages>>{}));
  // K and V blocks land as (N, D, stage) tiles, D contiguous and swizzled.
  using SmemLayoutKV = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                              Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  // V seen as the MN-major B operand (D, N, stage) of the P V product: same bytes, transposed.
  using SmemLayoutVt = decltype(composition(
      SmemLayoutKV{},
      make_layout(Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{},
                  Stride<Int<kBlockN>, _1, Int<kBlockN * kHeadDim>>{})));

  // The output tile staged for the TMA stores, swizzled like Q: each consumer warpgroup's 64
  // rows are one contiguous (64, D) half, stored on its own.
  static constexpr int kRowsPerWarpgroup = kBlockM / kWarpgroups;
  using SmemLayoutOHalf = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                                 Shape<Int<kRowsPerWarpgroup>, Int<kHeadDim>>{}));
  using SmemLayoutO =
      decltype(tile_to_shape(SmemLayoutOHalf{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));

  struct SharedStorage {
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutQ>> q;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutO>> o;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutKV>> k;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutKV>> v;
    alignas(8) uint64_t full_q[kQStages];
    uint64_t empty_q[kQStages];
    uint64_t full_k[kStages];   // TMA landed (transaction count)
    uint64_t full_v[kStages];
    uint64_t empty_k[kStages];  // both consumer warpgroups (of both CTAs in a pair) are done
    uint64_t empty_v[kStages];
    uint64_t full_tile[kTileSlots];   // the producer posted a tile in the slot
    uint64_t empty_tile[kTileSlots];  // every consumer thread and the loader have read the slot
    PostedTile tiles[kTileSlots];
  };

  static constexpr int kQBytes = kBlockM * kHeadDim * int(sizeof(Element));
  static constexpr int kKVBytes = kBlockN * kHeadDim * int(sizeof(Element));

  // Global views for TMA: (seq, D, head, batch) with the caller's strides.
  using GmemStride = Stride<int64_t, _1, int64_t, int64_t>;
  using GmemShape = Shape<int, Int<kHeadDim>, int, int>;

  CUTE_HOST_DEVICE static auto gmem_q(const BlockSparseFwdParams& p) {
    return make_tensor(make_gmem_ptr(static_cast<const Element*>(p.q)),
                       GmemShape{p.q_len, Int<kHeadDim>{}, p.heads, p.batch},
                       GmemStride{p.q_row_stride, _1{}, p.q_head_stride, p.q_batch_stride});
  }
  CUTE_HOST_DEVICE static auto gmem_k(const BlockSparseFwdParams& p) {
    return make_tensor(make_gmem_ptr(static_cast<const Element*>(p.k)),
                       GmemShape{p.kv_len, Int<kHeadDim>{}, p.kv_heads, p.batch},
                       GmemStride{p.k_row_stride, _1{}, p.k_head_stride, p.k_batch_stride});
  }
  CUTE_HOST_DEVICE static auto gmem_v(const BlockSparseFwdParams& p) {
    return make_tensor(make_gmem_ptr(static_cast<const Element*>(p.v)),
                       GmemShape{p.kv_len, Int<kHeadDim>{}, p.kv_heads, p.batch},
                       GmemStride{p.v_row_stride, _1{}, p.v_head_stride, p.v_batch_stride});
  }

  // The output [batch, heads, q_len, D], contiguous.
  CUTE_HOST_DEVICE static auto gmem_o(const BlockSparseFwdParams& p) {
    const int64_t head_stride = int64_t(p.q_len) * kHeadDim;
    return make_tensor(make_gmem_ptr(static_cast<Element*>(p.out)),
                       GmemShape{p.q_len, Int<kHeadDim>{}, p.heads, p.batch},
                       GmemStride{int64_t(kHeadDim), _1{}, head_stride, head_stride * p.heads});
  }

  static auto make_tma_q(const BlockSparseFwdParams& p) {
    return make_tma_copy(SM90_TMA_LOAD{}, gmem_q(p), take<0, 2>(SmemLayoutQ{}),
                         Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{});
  }
  // K/V: in a pair, each CTA's copy loads its half of the block into both CTAs.
  using TmaLoadKV = std::conditional_t<kClusterM == 1, SM90_TMA_LOAD, SM90_TMA_LOAD_MULTICAST>;
  static auto make_tma_k(const BlockSparseFwdParams& p) {
    return make_tma_copy(TmaLoadKV{}, gmem_k(p), take<0, 2>(SmemLayoutKV{}),
                         Shape<Int<kBlockN>, Int<kHeadDim>>{}, Int<kClusterM>{});
  }
  static auto make_tma_v(const BlockSparseFwdParams& p) {
    return make_tma_copy(TmaLoadKV{}, gmem_v(p), take<0, 2>(SmemLayoutKV{}),
                         Shape<Int<kBlockN>, Int<kHeadDim>>{}, Int<kClusterM>{});
  }

  static auto make_tma_o(const BlockSparseFwdParams& p) {
    return make_tma_copy(SM90_TMA_STORE{}, gmem_o(p), SmemLayoutOHalf{},
                         Shape<Int<kRowsPerWarpgroup>, Int<kHeadDim>>{}, _1{});
  }

  using TmaQ = decltype(make_tma_q(std::declval<BlockSparseFwdParams>()));
  using TmaO = decltype(make_tma_o(std::declval<BlockSparseFwdParams>()));
  using TmaK = decltype(make_tma_k(std::declval<BlockSparseFwdParams>()));
  using TmaV = decltype(make_tma_v(std::declval<BlockSparseFwdParams>()));
};

// Everything a CTA needs, passed by value as one __grid_constant__ kernel parameter.
template <class Traits>
struct KernelArgs {
  BlockSparseFwdParams params;
  typename Traits::TmaQ tma_q;
  typename Traits::TmaK tma_k;
  typename Traits::TmaV tma_v;
  typename Traits::TmaO tma_o;
};

}  // namespace sas
