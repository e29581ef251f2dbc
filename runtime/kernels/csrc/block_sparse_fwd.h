// The block-sparse attention forward kernel for sm_90a and its launcher: one CTA per
// (query block, head, batch), warp-specialised: a producer warpgroup fetches Q and the listed K/V
// blocks by index with TMA into a `kStages`-deep ring, two consumer warpgroups of 64 query rows
// each run the WGMMAs and the softmax, and mbarriers hand stages back and forth.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/device_kernel.h>

#include <stdexcept>
#include <string>

#include "epilogue.h"
#include "mainloop.h"
#include "mask.h"
#include "params.h"
#include "softmax.h"
#include "tile_traits.h"

namespace sas {

using namespace cute;

// The consumer warpgroups: for each listed block, S = Q K^T, mask (partial and tail blocks only),
// online softmax, O += P V; each stage is released as soon as its last reader is done with it.
template <class Traits>
CUTE_DEVICE void consume(BlockList const& blocks, typename Traits::SharedStorage& smem,
                         BlockSparseFwdParams const& p, int m_block, int head, int batch,
                         int thread) {
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kStages = Traits::kStages;

  Tensor sQ = make_tensor(make_smem_ptr(smem.q.data()), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(smem.k.data()), typename Traits::SmemLayoutKV{});
  Tensor sVt = make_tensor(make_smem_ptr(smem.v.data()), typename Traits::SmemLayoutVt{});

  typename Traits::TiledMmaQK mma_qk;
  typename Traits::TiledMmaPV mma_pv;
  auto thr_qk = mma_qk.get_thread_slice(thread);
  auto thr_pv = mma_pv.get_thread_slice(thread);
  Tensor tSrQ = thr_qk.make_fragment_A(thr_qk.partition_A(sQ));  // (MMA, MMA_M, MMA_K)
  Tensor tSrK = thr_qk.make_fragment_B(thr_qk.partition_B(sK));  // (MMA, MMA_N, MMA_K, stage)
  Tensor tOrV = thr_pv.make_fragment_B(thr_pv.partition_B(sVt));  // (MMA, MMA_N, MMA_K, stage)

  Tensor tOrO = partition_fragment_C(mma_pv, Shape<Int<kBlockM>, Int<kHeadDim>>{});
  clear(tOrO);
  Tensor tOrO_rc = make_tensor(tOrO.data(), accumulator_rows_cols(tOrO.layout()));

  Tensor cS = make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{});
  Tensor tScS = thr_qk.partition_C(cS);
  Tensor tScS_rc = make_tensor(tScS.data(), accumulator_rows_cols(tScS.layout()));
  constexpr int kRows = decltype(size<0>(tScS_rc))::value;

  OnlineSoftmax<kRows> softmax(p.scale_log2);
  ElementRules rules{p.causal, p.window, p.global_tokens,
                     p.document_ids == nullptr
                         ? nullptr
                         : p.document_ids + int64_t(batch) * p.document_batch_stride};
  const int q_offset = m_block * kBlockM;
  const int kv_len = p.kv_lengths == nullptr ? p.kv_len : min(p.kv_len, p.kv_lengths[batch]);

  if (blocks.total > 0) {
    TransactionBarrier::wait(&smem.barrier_q, 0);
  }

  CUTE_NO_UNROLL
  for (int j = 0; j < blocks.total; ++j) {
    const int stage = j % kStages;
    const int phase = (j / kStages) & 1;
    const int n_block = blocks.block(j);
    const int kv_offset = n_block * kBlockN;

    Tensor tSrS = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});
    TransactionBarrier::wait(&smem.full_k[stage], phase);
    warpgroup_gemm<true, false>(mma_qk, tSrQ, tSrK(_, _, _, stage), tSrS);
    ReleaseBarrier::arrive(&smem.empty_k[stage]);

    Tensor tSrS_rc = make_tensor(tSrS.data(), accumulator_rows_cols(tSrS.layout()));
    const bool crosses_end = n_block < 0 || kv_offset + kBlockN > kv_len;
    if (blocks.is_partial(j)) {
      apply_element_mask<true>(tSrS_rc, tScS_rc, q_offset, kv_offset, kv_len, rules, p.q_len);
    } else if (crosses_end) {
      apply_element_mask<false>(tSrS_rc, tScS_rc, q_offset, kv_offset, kv_len, rules, p.q_len);
    }
    softmax.step(tSrS_rc, tOrO_rc);

    Tensor tOrP = make_tensor_like<Element>(tSrS);
    CUTE_UNROLL
    for (int i = 0; i < size(tSrS); ++i) {
      tOrP(i) = Element(tSrS(i));
    }
    Tensor tOrP_a = make_tensor(tOrP.data(), accumulator_as_operand_a(tSrS.layout()));
    TransactionBarrier::wait(&smem.full_v[stage], phase);
    warpgroup_gemm<false, true>(mma_pv, tOrP_a, tOrV(_, _, _, stage), tOrO);
    ReleaseBarrier::arrive(&smem.empty_v[stage]);
  }

  float lse[kRows];
  softmax.finish(tOrO_rc, lse);
  Tensor cO = make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{});
  store_output<Traits>(tOrO, thr_pv.partition_C(cO), tScS_rc, lse, p, m_block, head, batch);
}

template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, 1)
    block_sparse_fwd_kernel(CUTLASS_GRID_CONSTANT KernelArgs<Traits> const args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using SharedStorage = typename Traits::SharedStorage;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;

  extern __shared__ __align__(1024) char shared_memory[];
  SharedStorage& smem = *reinterpret_cast<SharedStorage*>(shared_memory);
  const BlockSparseFwdParams& p = args.params;

  const int m_block = blockIdx.x;
  const int head = blockIdx.y;
  const int batch = blockIdx.z;
  const int kv_head = head / (p.heads / p.kv_heads);
  const int thread = threadIdx.x;
  const bool is_leader = thread == 0;

  const int32_t full_count =
      p.full_kv_num_blocks[batch * p.full_num_batch_stride + head * p.full_num_head_stride +
                           m_block * p.full_num_row_stride];
  const int32_t partial_count = p.kv_num_blocks[batch * p.num_batch_stride +
                                                head * p.num_head_stride +
                                                m_block * p.num_row_stride];
  BlockList blocks;
  blocks.full = p.full_kv_indices + batch * p.full_idx_batch_stride +
                head * p.full_idx_head_stride + m_block * p.full_idx_row_stride;
  blocks.partial = p.kv_indices + batch * p.idx_batch_stride + head * p.idx_head_stride +
                   m_block * p.idx_row_stride;
  blocks.full_count = max(0, min(full_count, p.full_slots));
  blocks.total = blocks.full_count + max(0, min(partial_count, p.partial_slots));

  // Tensors: global (TMA coordinate views), shared, and each thread's MMA partitions.
  Tensor mQ = args.tma_q.get_tma_tensor(shape(Traits::gmem_q(p)));
  Tensor mK = args.tma_k.get_tma_tensor(shape(Traits::gmem_k(p)));
  Tensor mV = args.tma_v.get_tma_tensor(shape(Traits::gmem_v(p)));
  Tensor gQ = local_tile(mQ(_, _, head, batch), Shape<Int<kBlockM>, Int<kHeadDim>>{},
                         make_coord(m_block, _0{}));  // (M, D)
  Tensor gK = local_tile(mK(_, _, kv_head, batch), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                         make_coord(_, _0{}));  // (N, D, n_blocks)
  Tensor gV = local_tile(mV(_, _, kv_head, batch), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                         make_coord(_, _0{}));  // (N, D, n_blocks)

  Tensor sQ = make_tensor(make_smem_ptr(smem.q.data()), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(smem.k.data()), typename Traits::SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(smem.v.data()), typename Traits::SmemLayoutKV{});
  auto [tQgQ, tQsQ] =
      tma_partition(args.tma_q, _0{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
  auto [tKgK, tKsK] =
      tma_partition(args.tma_k, _0{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
  auto [tVgV, tVsV] =
      tma_partition(args.tma_v, _0{}, Layout<_1>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));

  if (is_leader) {
    TransactionBarrier::init(&smem.barrier_q, 1);
    CUTE_UNROLL
    for (int s = 0; s < Traits::kStages; ++s) {
      TransactionBarrier::init(&smem.full_k[s], 1);
      TransactionBarrier::init(&smem.full_v[s], 1);
      ReleaseBarrier::init(&smem.empty_k[s], Traits::kConsumerThreads);
      ReleaseBarrier::init(&smem.empty_v[s], Traits::kConsumerThreads);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  if (thread < 128) {
    // Producer warpgroup: give registers to the consumers; one thread drives the TMA.
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegisters>();
    if (is_leader) {
      KVProducer<Traits>::run(blocks, smem, args.tma_q, args.tma_k, args.tma_v, tQgQ, tQsQ, tKgK,
                              tKsK, tVgV, tVsV);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegisters>();
    consume<Traits>(blocks, smem, p, m_block, head, batch, thread - 128);
  }
#endif
}

template <class Traits>
void launch_block_sparse_fwd(const BlockSparseFwdParams& p, cudaStream_t stream) {
  KernelArgs<Traits> args{p, Traits::make_tma_q(p), Traits::make_tma_k(p), Traits::make_tma_v(p)};
  constexpr int kSmemBytes = int(sizeof(typename Traits::SharedStorage));
  auto kernel = &block_sparse_fwd_kernel<Traits>;
  cudaError_t status =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("block_sparse_fwd: ") + cudaGetErrorString(status));
  }
  dim3 grid((p.q_len + Traits::kBlockM - 1) / Traits::kBlockM, p.heads, p.batch);
  kernel<<<grid, Traits::kThreads, kSmemBytes, stream>>>(args);
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
