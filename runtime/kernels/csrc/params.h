// Launch parameters of the block-sparse attention forward: plain data, no torch, no CuTe, so the
// op's C++ binding and the CUDA instantiations agree on one struct.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace sas {

enum class DType : int { kBFloat16 = 0, kFloat16 = 1 };

struct BlockSparseFwdParams {
  // q [batch, heads, q_len, head_dim], k/v [batch, kv_heads, kv_len, head_dim]: element strides,
  // head_dim contiguous and every other stride a multiple of 8 elements (16 bytes, for TMA).
  const void* q;
  const void* k;
  const void* v;
  void* out;    // [batch, heads, q_len, head_dim], contiguous
  float* lse;   // [batch, heads, q_len], contiguous, natural log
  int64_t q_batch_stride, q_head_stride, q_row_stride;
  int64_t k_batch_stride, k_head_stride, k_row_stride;
  int64_t v_batch_stride, v_head_stride, v_row_stride;
  int batch, heads, kv_heads, q_len, kv_len;
  int partial_slots, full_slots;  // index slots per mask row (kv_indices.size(-1), ...)

  // Block mask (FlexAttention's BlockMask layout), int32, indexed [b, h, q_block(, slot)] with
  // the strides below (0 where the mask broadcasts over batch or heads).
  const int32_t* kv_num_blocks;
  const int32_t* kv_indices;
  const int32_t* full_kv_num_blocks;
  const int32_t* full_kv_indices;
  int64_t num_batch_stride, num_head_stride, num_row_stride;
  int64_t idx_batch_stride, idx_head_stride, idx_row_stride;
  int64_t full_num_batch_stride, full_num_head_stride, full_num_row_stride;
  int64_t full_idx_batch_stride, full_idx_head_stride, full_idx_row_stride;

  // Element rules of partial blocks (sas_runtime.block_mask.ElementMask): window < 0 means none.
  bool causal;
  int window;
  int global_tokens;
  const int32_t* document_ids;  // [batch, max(q_len, kv_len)] or nullptr
  int64_t document_batch_stride;
  const int32_t* kv_lengths;  // [batch] valid keys per sequence (keys past it are hidden), or nullptr

  int* tile_counter;  // one int, zero at launch: tiles taken past each CTA's first
  // [batch * heads * q_blocks]: the tile (in TileScheduler's numbering) taken at each position
  // of the schedule, a permutation (entries are clamped, not checked: a repeated tile leaves
  // another unwritten), or nullptr for TileScheduler's own order.
  const int32_t* tile_order;
  // Each tile's last P V product runs beside the next tile's first Q K^T (see `consume`).
  bool carry_last_product;
  // CTAs run in pairs on query blocks 2 i and 2 i + 1, whose block lists must be the same
  // (TileTraits' kClusterM): D128 and an even count of query blocks; tile_order is ignored.
  bool pair_tiles;

  // bench/kernel_trace.py's timeline (trace.h), written only by SAS_KERNEL_TRACE builds.
  int64_t* trace;

  float scale_log2;  // softmax scale * log2(e)
  float scale;       // softmax scale
};

template <DType kDType, int kHeadDim>
void run_block_sparse_fwd(const BlockSparseFwdParams& params, cudaStream_t stream);

}  // namespace sas
