// The block-sparse attention forward kernel for sm_90a and its launcher: a persistent grid (one
// CTA per SM taking (query block, head, batch) tiles from a shared counter), warp-specialised: a
// producer warpgroup posts each tile to the consumers and fetches Q (double-buffered) and the
// listed K/V blocks by index with TMA into a `kStages`-deep ring, two consumer warpgroups of 64
// query rows each run the WGMMAs and the softmax, and mbarriers hand buffers back and forth.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/device_kernel.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "epilogue.h"
#include "mainloop.h"
#include "mask.h"
#include "params.h"
#include "softmax.h"
#include "tile_scheduler.h"
#include "tile_traits.h"
#include "trace.h"

namespace sas {

using namespace cute;

// The consumer warpgroups: for each tile, for each listed block, S = Q K^T, mask (partial and
// tail blocks only), online softmax, O += P V; each buffer is released as soon as its last
// reader is done with it; then the tile's output and LSE are stored.
//
// kCarry: a tile's last P V product is issued by the next tile, right after that tile's first
// Q K^T, so the two GEMMs run together and S_0's softmax runs under the product (the shape of
// the block loop, carried across tiles), and each softmax is kept under its product (below).
// Faster at D128 when tiles are long (bench/KERNEL_NOTES.md, run 9), slower on short tiles and
// at D64; `carries_last_product` in ops.py picks it.
template <class Traits, bool kCarry>
CUTE_DEVICE void consume(TileScheduler const& scheduler, typename Traits::SharedStorage& smem,
                         KernelArgs<Traits> const& args, int thread) {
  BlockSparseFwdParams const& p = args.params;
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;

  Tensor sQ = make_tensor(make_smem_ptr(smem.q.data()), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(smem.k.data()), typename Traits::SmemLayoutKV{});
  Tensor sVt = make_tensor(make_smem_ptr(smem.v.data()), typename Traits::SmemLayoutVt{});

  typename Traits::TiledMmaQK mma_qk;
  typename Traits::TiledMmaPV mma_pv;
  auto thr_qk = mma_qk.get_thread_slice(thread);
  auto thr_pv = mma_pv.get_thread_slice(thread);
  Tensor tSrQ = thr_qk.make_fragment_A(thr_qk.partition_A(sQ));  // (MMA, MMA_M, MMA_K, q stage)
  Tensor tSrK = thr_qk.make_fragment_B(thr_qk.partition_B(sK));  // (MMA, MMA_N, MMA_K, stage)
  Tensor tOrV = thr_pv.make_fragment_B(thr_pv.partition_B(sVt));  // (MMA, MMA_N, MMA_K, stage)

  Tensor tOrO = partition_fragment_C(mma_pv, Shape<Int<kBlockM>, Int<kHeadDim>>{});
  Tensor tOrO_rc = make_tensor(tOrO.data(), accumulator_rows_cols(tOrO.layout()));
  Tensor cS = make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{});
  Tensor tScS = thr_qk.partition_C(cS);
  Tensor tScS_rc = make_tensor(tScS.data(), accumulator_rows_cols(tScS.layout()));
  Tensor cO = make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{});
  Tensor tOcO = thr_pv.partition_C(cO);
  constexpr int kRows = decltype(size<0>(tScS_rc))::value;

  RingPosition<Traits::kQStages> q_ring;
  RingPosition<Traits::kStages> kv_ring;
  // One thread per warpgroup signals a release: a warpgroup's WGMMAs complete together.
  const bool is_signaller = thread % 128 == 0;

  RingPosition<Traits::kTileSlots> tile_ring;
  // This warpgroup's events in a trace row (trace.h); only its signaller writes them.
  const int trace_base = kTraceConsumer + kTraceConsumerStride * (thread / 128);
  auto trace = [&](int event) {
    if (is_signaller) {
      trace_event(p.trace, tile_ring.count - 1, trace_base + event);
    }
  };

  Tensor tOrP_carried = make_tensor<Element>(
      partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{}).layout());
  Tensor tOrP_carried_a =
      make_tensor(tOrP_carried.data(), accumulator_as_operand_a(tOrP_carried.layout()));

  // kCarry: until the next tile issues its last product a tile is pending: O holds its output
  // without the last block, P the last block's probabilities. Block 0 always issues a pending
  // product, so no WGMMA sits in a branch there (ptxas would serialise them all): when no tile
  // is pending, it multiplies P (zeroed) by the V block about to land (the tile's own V_0); the
  // result is thrown away by the clear of O that follows.
  struct PendingTile {
    int m_block, head, batch;
    int v_stage, v_phase;
  };
  PendingTile pending{0, 0, 0, 0, 0};
  bool tile_pending = false;
  if constexpr (kCarry) {
    clear(tOrP_carried);
  }
  float pending_scale[kRows];
  float pending_lse[kRows];
  // Issues the pending tile's last product into O.
  auto issue_pending_product = [&] {
    TransactionBarrier::wait(&smem.full_v[pending.v_stage], pending.v_phase);
    warpgroup_gemm_issue<false, true>(mma_pv, tOrP_carried_a, tOrV(_, _, _, pending.v_stage),
                                      tOrO);
  };
  // Once the pending product has landed: releases its V and stores the pending tile.
  auto store_pending = [&] {
    warpgroup_fence_operand(tOrO);
    warpgroup_fence_operand(tOrP_carried_a);
    if (tile_pending) {
      release_kv<Traits::kClusterM>(&smem.empty_v[pending.v_stage], is_signaller);
      store_output<Traits>(args.tma_o, smem, tOrO, pending_scale, mma_pv, tScS_rc, pending_lse,
                           p, pending.m_block, pending.head, pending.batch, thread);
      tile_pending = false;
    }
  };
  // Stores a pending tile now (before an empty tile, and at the end); the next block 0 then
  // issues P = 0 against its own V_0.
  auto flush_pending = [&] {
    if (tile_pending) {
      issue_pending_product();
      warpgroup_wait<0>();
      store_pending();
      clear(tOrP_carried);
      pending.v_stage = kv_ring.stage();
      pending.v_phase = kv_ring.phase();
    }
  };
  // Never taken (a tile exists only when heads > 0), but a branch ptxas keeps, the same on
  // every thread: placed between a softmax and the wait for the product in flight beside it,
  // it keeps the wait there; without it ptxas hoists the wait above the softmax (to convert P
  // early into the registers the product is still reading). Measured in run 9: worth it only
  // together with the carried product.
  auto keep_softmax_under_product = [&] {
    if (p.heads <= 0) {
      __trap();
    }
  };

  CUTE_NO_UNROLL
  for (PostedTile posted = take_posted_tile(smem, tile_ring);
       posted.index < scheduler.num_tiles(); posted = take_posted_tile(smem, tile_ring)) {
    trace(kTraceTaken);
    const Tile tile = posted.tile;
    const BlockList blocks{posted.full, posted.partial, posted.full_count, posted.total};
    const ElementRules rules{
        p.causal, p.window, p.global_tokens,
        p.document_ids == nullptr ? nullptr
                                  : p.document_ids + int64_t(tile.batch) * p.document_batch_stride};
    const int q_offset = tile.m_block * kBlockM;
    const int kv_len = posted.kv_len;
    OnlineSoftmax<kRows> softmax(p.scale_log2);

    if (blocks.total == 0) {
      if constexpr (kCarry) {
        flush_pending();
      }
      clear(tOrO);
      float row_scale[kRows];
      float lse[kRows];
      softmax.finish(row_scale, lse);
      store_output<Traits>(args.tma_o, smem, tOrO, row_scale, mma_pv, tScS_rc, lse, p,
                           tile.m_block, tile.head, tile.batch, thread);
      continue;
    }
    const int q_stage = q_ring.stage();
    TransactionBarrier::wait(&smem.full_q[q_stage], q_ring.phase());
    trace(kTraceQReady);
#ifdef SAS_KERNEL_TRACE
    TransactionBarrier::wait(&smem.full_k[kv_ring.stage()], kv_ring.phase());
    trace(kTraceK0Ready);
#endif

    // Issues S = Q K^T for the block at the ring's current position.
    auto score_block = [&](auto& tSrS) {
      const int stage = kv_ring.stage();
      TransactionBarrier::wait(&smem.full_k[stage], kv_ring.phase());
      warpgroup_gemm_issue<true, false>(mma_qk, tSrQ(_, _, _, q_stage), tSrK(_, _, _, stage),
                                        tSrS);
    };
    // Masks S for block j where it needs it (partial, or crossing the end of the keys).
    auto mask_block = [&](int j, auto& tSrS) {
      const int kv_offset = blocks.block(j) * kBlockN;
      Tensor tSrS_rc = make_tensor(tSrS.data(), accumulator_rows_cols(tSrS.layout()));
      if (blocks.is_partial(j)) {
        apply_element_mask<true>(tSrS_rc, tScS_rc, q_offset, kv_offset, kv_len, rules, p.q_len);
      } else if (kv_offset < 0 || kv_offset + kBlockN > kv_len) {
        apply_element_mask<false>(tSrS_rc, tScS_rc, q_offset, kv_offset, kv_len, rules, p.q_len);
      }
      return tSrS_rc;
    };

    // P for this tile: kCarry's lives across tiles; the plain kernel's is made here, per tile
    // (ptxas schedules the plain kernel as it did before kCarry existed).
    Tensor tOrP_tile = make_tensor<Element>(
        partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{}).layout());
    auto& tOrP = [&]() -> auto& {
      if constexpr (kCarry) {
        return tOrP_carried;
      } else {
        return tOrP_tile;
      }
    }();
    Tensor tOrP_a = make_tensor(tOrP.data(), accumulator_as_operand_a(tOrP.layout()));
    // The probabilities of S, in the element type, as the next P V product's A operand.
    auto take_probabilities = [&](auto const& tSrS) {
      CUTE_UNROLL
      for (int i = 0; i < size(tSrS); ++i) {
        tOrP(i) = Element(tSrS(i));
      }
    };
    // The P V product in flight has landed: O and P are free again, and its V stage goes back.
    auto product_landed = [&](int v_stage) {
      warpgroup_wait<0>();
      warpgroup_fence_operand(tOrO);
      warpgroup_fence_operand(tOrP_a);
      release_kv<Traits::kClusterM>(&smem.empty_v[v_stage], is_signaller);
    };

    // Block 0: S_0 (kCarry: with the pending tile's last product beside it) and P_0. Then for
    // each block j, S_j's GEMM and P_{j-1} V_{j-1} are in flight together (FlashAttention 3's
    // intra-warpgroup overlap; without kCarry ptxas waits for both before the softmax); the
    // output is rescaled once the product has landed.
    // The plain kernel starts a tile of two or more blocks with S_0 and S_1 together: the
    // tensor cores run S_1 under S_0's softmax (O is not live yet: P_0 V_0 starts it from
    // zero), then block 1 goes as in the loop.
    float correction[kRows];
    int first_loop_block = 1;
    if (!kCarry && blocks.total >= 2) {
      Tensor tSrS0 = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});
      Tensor tSrS1 = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});
      const int stage0 = kv_ring.stage();
      const int phase0 = kv_ring.phase();
      score_block(tSrS0);
      ++kv_ring.count;
      score_block(tSrS1);
      warpgroup_wait<1>();
      warpgroup_fence_operand(tSrS0);
      release_kv<Traits::kClusterM>(&smem.empty_k[stage0], is_signaller);
      auto tSrS0_rc = mask_block(0, tSrS0);
      softmax.update(tSrS0_rc, correction);
      take_probabilities(tSrS0);
      TransactionBarrier::wait(&smem.full_v[stage0], phase0);
      warpgroup_gemm_issue<true, true>(mma_pv, tOrP_a, tOrV(_, _, _, stage0), tOrO);
      warpgroup_wait<1>();
      warpgroup_fence_operand(tSrS1);
      release_kv<Traits::kClusterM>(&smem.empty_k[kv_ring.stage()], is_signaller);
      auto tSrS1_rc = mask_block(1, tSrS1);
      softmax.update(tSrS1_rc, correction);
      product_landed(stage0);
      OnlineSoftmax<kRows>::rescale(tOrO_rc, correction);
      take_probabilities(tSrS1);
      first_loop_block = 2;
    } else {
      Tensor tSrS = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});
      auto score_softmax = [&] {
        warpgroup_fence_operand(tSrS);
        release_kv<Traits::kClusterM>(&smem.empty_k[kv_ring.stage()], is_signaller);
        auto tSrS_rc = mask_block(0, tSrS);
        softmax.update(tSrS_rc, correction);
      };
      if constexpr (kCarry) {
        score_block(tSrS);
        issue_pending_product();
        warpgroup_wait<1>();
        score_softmax();
        keep_softmax_under_product();
        warpgroup_wait<0>();
        store_pending();
        clear(tOrO);  // nothing is in flight here
      } else {
        clear(tOrO);
        score_block(tSrS);
        warpgroup_wait<0>();
        score_softmax();
      }
      take_probabilities(tSrS);
    }
    trace(kTraceFirstBlockDone);
    CUTE_NO_UNROLL
    for (int j = first_loop_block; j < blocks.total; ++j) {
      const int previous_stage = kv_ring.stage();
      const int previous_phase = kv_ring.phase();
      ++kv_ring.count;
      Tensor tSrS = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});
      score_block(tSrS);
      TransactionBarrier::wait(&smem.full_v[previous_stage], previous_phase);
      warpgroup_gemm_issue<false, true>(mma_pv, tOrP_a, tOrV(_, _, _, previous_stage), tOrO);
      warpgroup_wait<1>();
      warpgroup_fence_operand(tSrS);
      release_kv<Traits::kClusterM>(&smem.empty_k[kv_ring.stage()], is_signaller);
      auto tSrS_rc = mask_block(j, tSrS);
      const bool moved = softmax.update(tSrS_rc, correction);
      if constexpr (kCarry) {
        keep_softmax_under_product();
      }
      product_landed(previous_stage);
      if constexpr (kCarry) {
        // Past the first few blocks most rows keep their max: a warp none of whose rows moved
        // skips the rescale, which stands between the product landing and the next GEMMs.
        if (__any_sync(0xffffffff, moved)) {
          OnlineSoftmax<kRows>::rescale(tOrO_rc, correction);
        }
      } else {
        OnlineSoftmax<kRows>::rescale(tOrO_rc, correction);
      }
      take_probabilities(tSrS);
    }
    // Every Q K^T of the tile has landed.
    release(&smem.empty_q[q_stage], is_signaller);
    ++q_ring.count;
    if constexpr (kCarry) {
      // The last product waits for the next tile.
      trace(kTraceLoopDone);
      softmax.finish(pending_scale, pending_lse);
      pending = PendingTile{tile.m_block, tile.head, tile.batch, kv_ring.stage(), kv_ring.phase()};
      tile_pending = true;
      ++kv_ring.count;
    } else {
      TransactionBarrier::wait(&smem.full_v[kv_ring.stage()], kv_ring.phase());
      warpgroup_gemm_issue<false, true>(mma_pv, tOrP_a, tOrV(_, _, _, kv_ring.stage()), tOrO);
      product_landed(kv_ring.stage());
      trace(kTraceLoopDone);
      ++kv_ring.count;
      float lse[kRows];
      softmax.finish(tOrO_rc, lse);
      trace(kTraceNormalised);
      float unit_scale[kRows];
      CUTE_UNROLL
      for (int r = 0; r < kRows; ++r) {
        unit_scale[r] = 1.f;
      }
      store_output<Traits>(args.tma_o, smem, tOrO, unit_scale, mma_pv, tScS_rc, lse, p,
                           tile.m_block, tile.head, tile.batch, thread,
                           [&] { trace(kTraceOutputInShared); });
      trace(kTraceStored);
    }
  }
  if constexpr (kCarry) {
    flush_pending();
  }
  finish_output_stores(thread);
  if (thread == 0) {
    trace_header(p.trace, true);
  }
}

template <class Traits, bool kCarry>
__global__ void __launch_bounds__(Traits::kThreads, 1)
    block_sparse_fwd_kernel(CUTLASS_GRID_CONSTANT KernelArgs<Traits> const args,
                            TileScheduler const scheduler) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(1024) char shared_memory[];
  auto& smem = *reinterpret_cast<typename Traits::SharedStorage*>(shared_memory);
  const int thread = threadIdx.x;

  if (thread == 0) {
    CUTE_UNROLL
    for (int s = 0; s < Traits::kQStages; ++s) {
      TransactionBarrier::init(&smem.full_q[s], 1);
      ReleaseBarrier::init(&smem.empty_q[s], Traits::kWarpgroups);
    }
    CUTE_UNROLL
    for (int s = 0; s < Traits::kStages; ++s) {
      TransactionBarrier::init(&smem.full_k[s], 1);
      TransactionBarrier::init(&smem.full_v[s], 1);
      // In a pair, the consumer warpgroups of both CTAs (release_kv).
      ReleaseBarrier::init(&smem.empty_k[s], Traits::kWarpgroups * Traits::kClusterM);
      ReleaseBarrier::init(&smem.empty_v[s], Traits::kWarpgroups * Traits::kClusterM);
    }
    CUTE_UNROLL
    for (int s = 0; s < Traits::kTileSlots; ++s) {
      ReleaseBarrier::init(&smem.full_tile[s], 1);
      // Every consumer thread and the loader.
      ReleaseBarrier::init(&smem.empty_tile[s], Traits::kConsumerThreads + 1);
    }
    cutlass::arch::fence_barrier_init();
    trace_header(args.params.trace, false);
  }
  if constexpr (Traits::kClusterM > 1) {
    // The other CTA's barriers are initialised before anything arrives on them or lands.
    cute::cluster_arrive_relaxed();
    cute::cluster_wait();
  } else {
    __syncthreads();
  }

  if (thread < 128) {
    // Producer warpgroup: give registers to the consumers; one thread loads K/V, one (in
    // another warp) takes the tiles and loads Q.
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegisters>();
    if (thread == 0) {
      Producer<Traits>::load(args, scheduler, smem);
    } else if (thread == 32) {
      Producer<Traits>::schedule(args, scheduler, smem);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegisters>();
    consume<Traits, kCarry>(scheduler, smem, args, thread - 128);
  }
  if constexpr (Traits::kClusterM > 1) {
    // Neither CTA of a pair leaves while the other may still arrive on its barriers.
    __syncwarp();
    cute::cluster_arrive();
    cute::cluster_wait();
  }
#endif
}

// Returns false, launching nothing, when no pair of CTAs fits on the device.
template <class Traits>
bool launch_tiles(const BlockSparseFwdParams& p, cudaStream_t stream) {
  KernelArgs<Traits> args{p, Traits::make_tma_q(p), Traits::make_tma_k(p), Traits::make_tma_v(p),
                          Traits::make_tma_o(p)};
  const TileScheduler scheduler{(p.q_len + Traits::kBlockM - 1) / Traits::kBlockM, p.heads,
                                p.batch};
  constexpr int kSmemBytes = int(sizeof(typename Traits::SharedStorage));
  static_assert(kSmemBytes <= 232448, "shared storage exceeds sm_90's 227 KB per block");
  auto kernel = p.carry_last_product ? &block_sparse_fwd_kernel<Traits, true>
                                     : &block_sparse_fwd_kernel<Traits, false>;
  int device = 0;
  int multiprocessors = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status == cudaSuccess) {
    status = cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device);
  }
  if (status == cudaSuccess) {
    status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  }
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("block_sparse_fwd: ") + cudaGetErrorString(status));
  }
  constexpr int kCluster = Traits::kClusterM;
  int grid = std::min(scheduler.num_tiles(), multiprocessors) / kCluster * kCluster;
  if constexpr (kCluster == 1) {
    kernel<<<grid, Traits::kThreads, kSmemBytes, stream>>>(args, scheduler);
    status = cudaGetLastError();
  } else {
    cudaLaunchAttribute cluster;
    cluster.id = cudaLaunchAttributeClusterDimension;
    cluster.val.clusterDim.x = kCluster;
    cluster.val.clusterDim.y = 1;
    cluster.val.clusterDim.z = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(grid);
    config.blockDim = dim3(Traits::kThreads);
    config.dynamicSmemBytes = kSmemBytes;
    config.stream = stream;
    config.attrs = &cluster;
    config.numAttrs = 1;
    // No more pairs than fit at once (a GPC with an odd count of free SMs leaves one idle).
    int clusters = 0;
    status = cudaOccupancyMaxActiveClusters(&clusters, kernel, &config);
    if (status == cudaSuccess && clusters == 0) {
      return false;
    }
    if (status == cudaSuccess) {
      config.gridDim = dim3(std::min(grid, clusters * kCluster));
      status = cudaLaunchKernelEx(&config, kernel, args, scheduler);
    }
  }
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("block_sparse_fwd launch: ") +
                             cudaGetErrorString(status));
  }
  return true;
}

// The pair kernel (Traits::kClusterM = 2) exists at D128 only, as FlashAttention 3 clusters
// only from D128; the op checks pair_tiles against the shapes before it gets here. Where no
// pair fits (a partitioned GPU) the CTAs run alone: the same result.
template <DType kDType, int kHeadDim>
void launch_block_sparse_fwd(const BlockSparseFwdParams& p, cudaStream_t stream) {
  if constexpr (kHeadDim == 128) {
    if (p.pair_tiles && launch_tiles<TileTraits<kDType, kHeadDim, 2>>(p, stream)) {
      return;
    }
  }
  launch_tiles<TileTraits<kDType, kHeadDim>>(p, stream);
}

}  // namespace sas

// Explicit instantiation of one (dtype, head dim); the generated *_sm90.cu files expand this.
#define SAS_INSTANTIATE_BLOCK_SPARSE_FWD(DTYPE, HEAD_DIM)                                      \
  template <>                                                                                  \
  void sas::run_block_sparse_fwd<DTYPE, HEAD_DIM>(const BlockSparseFwdParams& params,          \
                                                  cudaStream_t stream) {                       \
    launch_block_sparse_fwd<DTYPE, HEAD_DIM>(params, stream);                                  \
  }
