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

namespace sas {

using namespace cute;

// The consumer warpgroups: for each tile, for each listed block, S = Q K^T, mask (partial and
// tail blocks only), online softmax, O += P V; each buffer is released as soon as its last
// reader is done with it; then the tile's output and LSE are stored.
template <class Traits>
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

  CUTE_NO_UNROLL
  for (PostedTile posted = take_posted_tile(smem, tile_ring, thread);
       posted.index < scheduler.num_tiles(); posted = take_posted_tile(smem, tile_ring, thread)) {
    const Tile tile = scheduler.tile(posted.index);
    const BlockList blocks =
        block_list_with_counts(p, tile, posted.full_count, posted.total - posted.full_count);
    const ElementRules rules{
        p.causal, p.window, p.global_tokens,
        p.document_ids == nullptr ? nullptr
                                  : p.document_ids + int64_t(tile.batch) * p.document_batch_stride};
    const int q_offset = tile.m_block * kBlockM;
    const int kv_len =
        p.kv_lengths == nullptr ? p.kv_len : min(p.kv_len, p.kv_lengths[tile.batch]);
    clear(tOrO);
    OnlineSoftmax<kRows> softmax(p.scale_log2);

    if (blocks.total == 0) {
      float lse[kRows];
      softmax.finish(tOrO_rc, lse);
      store_output<Traits>(args.tma_o, smem, tOrO, mma_pv, tScS_rc, lse, p, tile.m_block,
                           tile.head, tile.batch, thread);
      continue;
    }
    const int q_stage = q_ring.stage();
    TransactionBarrier::wait(&smem.full_q[q_stage], q_ring.phase());

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

    // Block 0: S_0 and P_0. Then for each block j, S_j's GEMM and P_{j-1} V_{j-1} are in flight
    // together, and S_j's softmax overlaps the P V product (FlashAttention 3's intra-warpgroup
    // overlap); the output is rescaled once the product has landed.
    Tensor tOrP = make_tensor<Element>(
        partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{}).layout());
    Tensor tOrP_a = make_tensor(tOrP.data(), accumulator_as_operand_a(tOrP.layout()));
    float correction[kRows];
    {
      Tensor tSrS = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});
      score_block(tSrS);
      warpgroup_wait<0>();
      warpgroup_fence_operand(tSrS);
      release(&smem.empty_k[kv_ring.stage()], is_signaller);
      auto tSrS_rc = mask_block(0, tSrS);
      softmax.update(tSrS_rc, correction);
      CUTE_UNROLL
      for (int i = 0; i < size(tSrS); ++i) {
        tOrP(i) = Element(tSrS(i));
      }
    }
    CUTE_NO_UNROLL
    for (int j = 1; j < blocks.total; ++j) {
      const int previous_stage = kv_ring.stage();
      const int previous_phase = kv_ring.phase();
      ++kv_ring.count;
      Tensor tSrS = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});
      score_block(tSrS);
      TransactionBarrier::wait(&smem.full_v[previous_stage], previous_phase);
      warpgroup_gemm_issue<false, true>(mma_pv, tOrP_a, tOrV(_, _, _, previous_stage), tOrO);
      warpgroup_wait<1>();
      warpgroup_fence_operand(tSrS);
      release(&smem.empty_k[kv_ring.stage()], is_signaller);
      auto tSrS_rc = mask_block(j, tSrS);
      softmax.update(tSrS_rc, correction);
      warpgroup_wait<0>();
      warpgroup_fence_operand(tOrO);
      warpgroup_fence_operand(tOrP_a);
      release(&smem.empty_v[previous_stage], is_signaller);
      OnlineSoftmax<kRows>::rescale(tOrO_rc, correction);
      CUTE_UNROLL
      for (int i = 0; i < size(tSrS); ++i) {
        tOrP(i) = Element(tSrS(i));
      }
    }
    TransactionBarrier::wait(&smem.full_v[kv_ring.stage()], kv_ring.phase());
    warpgroup_gemm_issue<false, true>(mma_pv, tOrP_a, tOrV(_, _, _, kv_ring.stage()), tOrO);
    warpgroup_wait<0>();
    warpgroup_fence_operand(tOrO);
    warpgroup_fence_operand(tOrP_a);
    release(&smem.empty_v[kv_ring.stage()], is_signaller);
    ++kv_ring.count;
    release(&smem.empty_q[q_stage], is_signaller);
    ++q_ring.count;

    float lse[kRows];
    softmax.finish(tOrO_rc, lse);
    store_output<Traits>(args.tma_o, smem, tOrO, mma_pv, tScS_rc, lse, p, tile.m_block, tile.head,
                         tile.batch, thread);
  }
  finish_output_stores(thread);
}

template <class Traits>
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
      ReleaseBarrier::init(&smem.empty_k[s], Traits::kWarpgroups);
      ReleaseBarrier::init(&smem.empty_v[s], Traits::kWarpgroups);
    }
    CUTE_UNROLL
    for (int s = 0; s < Traits::kTileSlots; ++s) {
      ReleaseBarrier::init(&smem.full_tile[s], 1);
      ReleaseBarrier::init(&smem.empty_tile[s], Traits::kConsumerThreads / 32);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  if (thread < 128) {
    // Producer warpgroup: give registers to the consumers; one thread drives the TMA.
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegisters>();
    if (thread == 0) {
      Producer<Traits>::run(args, scheduler, smem);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegisters>();
    consume<Traits>(scheduler, smem, args, thread - 128);
  }
#endif
}

template <class Traits>
void launch_block_sparse_fwd(const BlockSparseFwdParams& p, cudaStream_t stream) {
  KernelArgs<Traits> args{p, Traits::make_tma_q(p), Traits::make_tma_k(p), Traits::make_tma_v(p),
                          Traits::make_tma_o(p)};
  const TileScheduler scheduler{(p.q_len + Traits::kBlockM - 1) / Traits::kBlockM, p.heads,
                                p.batch};
  constexpr int kSmemBytes = int(sizeof(typename Traits::SharedStorage));
  static_assert(kSmemBytes <= 232448, "shared storage exceeds sm_90's 227 KB per block");
  auto kernel = &block_sparse_fwd_kernel<Traits>;
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
  const int grid = std::min(scheduler.num_tiles(), multiprocessors);
  kernel<<<grid, Traits::kThreads, kSmemBytes, stream>>>(args, scheduler);
  status = cudaGetLastError();
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("block_sparse_fwd launch: ") +
                             cudaGetErrorString(status));
  }
}

}  // namespace sas

// Explicit instantiation of one (dtype, head dim); the generated *_sm90.cu files expand this.
#define SAS_INSTANTIATE_BLOCK_SPARSE_FWD(DTYPE, HEAD_DIM)                                      \
  template <>                                                                                  \
  void sas::run_block_sparse_fwd<DTYPE, HEAD_DIM>(const BlockSparseFwdParams& params,          \
                                                  cudaStream_t stream) {                       \
    launch_block_sparse_fwd<TileTraits<DTYPE, HEAD_DIM>>(params, stream);                      \
  }
