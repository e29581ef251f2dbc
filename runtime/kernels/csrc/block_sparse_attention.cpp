// The `sas::block_sparse_attention_fwd` op: schema declared once here, the CUDA implementation
// checks its inputs and dispatches to the instantiations this build compiled.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <optional>
#include <tuple>

#include "params.h"
#include "trace.h"

namespace sas {
namespace {

#ifdef SAS_KERNEL_TRACE
// The last call's timeline (trace.h): [CTAs, kTraceTiles + 1, kTraceEvents] int64.
at::Tensor last_trace_tensor;

at::Tensor last_trace() { return last_trace_tensor; }
#endif

void check_mask_tensor(const at::Tensor& t, const char* name, int64_t rank, const at::Tensor& q) {
  TORCH_CHECK(t.scalar_type() == at::kInt, name, " must be int32, got ", t.scalar_type());
  TORCH_CHECK(t.device() == q.device(), name, " must be on ", q.device(), ", got ", t.device());
  TORCH_CHECK(t.dim() == rank, name, " must have ", rank, " dims, got ", t.dim());
}

// Strides of a mask tensor broadcast to [batch, heads, ...]: 0 along a size-1 batch/head dim.
std::tuple<int64_t, int64_t, int64_t> mask_strides(const at::Tensor& t, int64_t batch,
                                                   int64_t heads, int64_t q_blocks,
                                                   const char* name) {
  TORCH_CHECK(t.size(0) == batch || t.size(0) == 1, name, " batch dim must be ", batch, " or 1");
  TORCH_CHECK(t.size(1) == heads || t.size(1) == 1, name, " head dim must be ", heads, " or 1");
  TORCH_CHECK(t.size(2) >= q_blocks, name, " must cover ", q_blocks, " query blocks, got ",
              t.size(2));
  if (t.dim() == 4) {
    TORCH_CHECK(t.stride(3) == 1 || t.size(3) <= 1, name, " must be contiguous in its last dim");
  }
  return {t.size(0) == 1 ? 0 : t.stride(0), t.size(1) == 1 ? 0 : t.stride(1), t.stride(2)};
}

void check_qkv(const at::Tensor& t, const char* name, const at::Tensor& q) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == q.device(), name, " must be on ", q.device());
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), name, " must have q's dtype ", q.scalar_type());
  TORCH_CHECK(t.dim() == 4, name, " must be [batch, heads, seq, head_dim], got ", t.dim(), " dims");
  TORCH_CHECK(t.stride(3) == 1, name, " must be contiguous in head_dim");
  for (int d = 0; d < 3; ++d) {
    TORCH_CHECK(t.stride(d) % 8 == 0, name, " strides must be multiples of 8 elements (TMA)");
  }
  TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name,
              " must be 16-byte aligned (TMA)");
}

template <DType kDType>
void dispatch_head_dim(const BlockSparseFwdParams& p, int64_t head_dim, cudaStream_t stream) {
  switch (head_dim) {
#ifndef SAS_DISABLE_HDIM64
    case 64:
      run_block_sparse_fwd<kDType, 64>(p, stream);
      return;
#endif
#ifndef SAS_DISABLE_HDIM128
    case 128:
      run_block_sparse_fwd<kDType, 128>(p, stream);
      return;
#endif
    default:
      TORCH_CHECK(false, "head_dim ", head_dim, " is not compiled into this build");
  }
}

std::tuple<at::Tensor, at::Tensor> block_sparse_attention_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& kv_num_blocks, const at::Tensor& kv_indices,
    const at::Tensor& full_kv_num_blocks, const at::Tensor& full_kv_indices,
    const std::optional<at::Tensor>& document_ids, const std::optional<at::Tensor>& kv_lengths,
    double scale, bool causal, int64_t window, int64_t global_tokens,
    const std::optional<at::Tensor>& tile_order, bool carry_last_product, bool pair_tiles) {
  check_qkv(q, "q", q);
  check_qkv(k, "k", q);
  check_qkv(v, "v", q);
  const int64_t batch = q.size(0), heads = q.size(1), q_len = q.size(2), head_dim = q.size(3);
  const int64_t kv_heads = k.size(1), kv_len = k.size(2);
  TORCH_CHECK(k.size(0) == batch && v.size(0) == batch, "q, k, v must share the batch size");
  TORCH_CHECK(v.size(1) == kv_heads && v.size(2) == kv_len, "k and v shapes differ");
  TORCH_CHECK(k.size(3) == head_dim && v.size(3) == head_dim, "q, k, v must share head_dim");
  TORCH_CHECK(kv_heads > 0 && heads % kv_heads == 0, "heads (", heads,
              ") must be a multiple of kv_heads (", kv_heads, ")");
  TORCH_CHECK(q_len > 0 && kv_len > 0, "sequence lengths must be positive");
  TORCH_CHECK(std::isfinite(scale) && scale > 0, "scale must be positive and finite");

  constexpr int64_t kBlock = 128;
  const int64_t q_blocks = (q_len + kBlock - 1) / kBlock;
  check_mask_tensor(kv_num_blocks, "kv_num_blocks", 3, q);
  check_mask_tensor(kv_indices, "kv_indices", 4, q);
  check_mask_tensor(full_kv_num_blocks, "full_kv_num_blocks", 3, q);
  check_mask_tensor(full_kv_indices, "full_kv_indices", 4, q);

  BlockSparseFwdParams p{};
  std::tie(p.num_batch_stride, p.num_head_stride, p.num_row_stride) =
      mask_strides(kv_num_blocks, batch, heads, q_blocks, "kv_num_blocks");
  std::tie(p.idx_batch_stride, p.idx_head_stride, p.idx_row_stride) =
      mask_strides(kv_indices, batch, heads, q_blocks, "kv_indices");
  std::tie(p.full_num_batch_stride, p.full_num_head_stride, p.full_num_row_stride) =
      mask_strides(full_kv_num_blocks, batch, heads, q_blocks, "full_kv_num_blocks");
  std::tie(p.full_idx_batch_stride, p.full_idx_head_stride, p.full_idx_row_stride) =
      mask_strides(full_kv_indices, batch, heads, q_blocks, "full_kv_indices");

  if (document_ids.has_value()) {
    const at::Tensor& doc = *document_ids;
    check_mask_tensor(doc, "document_ids", 2, q);
    TORCH_CHECK(doc.size(0) == batch, "document_ids must have one row per batch");
    TORCH_CHECK(doc.size(1) >= std::max(q_len, kv_len), "document_ids must cover every position");
    TORCH_CHECK(doc.stride(1) == 1, "document_ids must be contiguous in its last dim");
    p.document_ids = doc.data_ptr<int32_t>();
    p.document_batch_stride = doc.stride(0);
  }
  if (kv_lengths.has_value()) {
    const at::Tensor& lengths = *kv_lengths;
    check_mask_tensor(lengths, "kv_lengths", 1, q);
    TORCH_CHECK(lengths.size(0) == batch && lengths.stride(0) == 1,
                "kv_lengths must be a contiguous [batch] tensor");
    p.kv_lengths = lengths.data_ptr<int32_t>();
  }
  // The kernel holds positions in 32-bit ints.
  constexpr int64_t kMaxTokens = std::numeric_limits<int>::max();
  TORCH_CHECK(q_len <= kMaxTokens && kv_len <= kMaxTokens, "sequence lengths must fit in int32");
  TORCH_CHECK(window >= -1 && window <= kMaxTokens, "window must be -1 (none) or in [0, 2^31)");
  TORCH_CHECK(global_tokens >= 0 && global_tokens <= kMaxTokens,
              "global_tokens must be in [0, 2^31)");

  if (tile_order.has_value()) {
    const at::Tensor& order = *tile_order;
    check_mask_tensor(order, "tile_order", 1, q);
    TORCH_CHECK(order.size(0) == batch * heads * q_blocks && order.stride(0) == 1,
                "tile_order must be a contiguous [batch * heads * query blocks] tensor");
    p.tile_order = order.data_ptr<int32_t>();
  }
  if (pair_tiles) {
    TORCH_CHECK(head_dim == 128, "pair_tiles needs head_dim 128, got ", head_dim);
    TORCH_CHECK(q_blocks % 2 == 0, "pair_tiles needs an even count of 128-row query blocks, got ",
                q_blocks);
    TORCH_CHECK(!tile_order.has_value(),
                "pair_tiles runs the kernel's own order: pass no tile_order");
  }

  const c10::cuda::CUDAGuard device_guard(q.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor out = at::empty({batch, heads, q_len, head_dim}, q.options());
  at::Tensor lse = at::empty({batch, heads, q_len}, q.options().dtype(at::kFloat));
  if (batch == 0 || heads == 0) {
    return {out, lse};  // no tile, so no grid to launch
  }
  // The kernel's tile counter starts at zero on every launch; the allocator reuses the buffer
  // only after this stream's kernel has run.
  at::Tensor tile_counter = at::empty({1}, q.options().dtype(at::kInt));
  const cudaError_t status =
      cudaMemsetAsync(tile_counter.data_ptr<int32_t>(), 0, sizeof(int32_t), stream);
  TORCH_CHECK(status == cudaSuccess, "tile counter reset: ", cudaGetErrorString(status));
  p.tile_counter = tile_counter.data_ptr<int32_t>();
#ifdef SAS_KERNEL_TRACE
  // One row per tile of every CTA the grid can hold (one per SM).
  const int64_t ctas = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  last_trace_tensor = at::zeros({ctas, kTraceTiles + 1, kTraceEvents}, q.options().dtype(at::kLong));
  p.trace = last_trace_tensor.data_ptr<int64_t>();
#endif

  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.q_batch_stride = q.stride(0);
  p.q_head_stride = q.stride(1);
  p.q_row_stride = q.stride(2);
  p.k_batch_stride = k.stride(0);
  p.k_head_stride = k.stride(1);
  p.k_row_stride = k.stride(2);
  p.v_batch_stride = v.stride(0);
  p.v_head_stride = v.stride(1);
  p.v_row_stride = v.stride(2);
  p.batch = static_cast<int>(batch);
  p.heads = static_cast<int>(heads);
  p.kv_heads = static_cast<int>(kv_heads);
  p.q_len = static_cast<int>(q_len);
  p.kv_len = static_cast<int>(kv_len);
  p.partial_slots = static_cast<int>(kv_indices.size(3));
  p.full_slots = static_cast<int>(full_kv_indices.size(3));
  p.kv_num_blocks = kv_num_blocks.data_ptr<int32_t>();
  p.kv_indices = kv_indices.data_ptr<int32_t>();
  p.full_kv_num_blocks = full_kv_num_blocks.data_ptr<int32_t>();
  p.full_kv_indices = full_kv_indices.data_ptr<int32_t>();
  p.causal = causal;
  p.window = static_cast<int>(window);
  p.global_tokens = static_cast<int>(global_tokens);
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * M_LOG2E);
  p.carry_last_product = carry_last_product;
  p.pair_tiles = pair_tiles;

  switch (q.scalar_type()) {
#ifndef SAS_DISABLE_BF16
    case at::kBFloat16:
      dispatch_head_dim<DType::kBFloat16>(p, head_dim, stream);
      break;
#endif
#ifndef SAS_DISABLE_FP16
    case at::kHalf:
      dispatch_head_dim<DType::kFloat16>(p, head_dim, stream);
      break;
#endif
    default:
      TORCH_CHECK(false, "dtype ", q.scalar_type(), " is not compiled into this build");
  }
  return {out, lse};
}

}  // namespace

// The op namespace is the C++ one, `sas`, for the library the runtime loads. A benchmark builds
// a variant of the kernel with `sas` defined to another name (build.py --op-namespace), which
// renames both, so that the two libraries load into one process, share no symbol, and run side
// by side (bench/kernel_variants.py). TORCH_LIBRARY pastes its argument without expanding it:
// these wrappers expand it first.
#define SAS_TORCH_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define SAS_TORCH_LIBRARY_IMPL(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)

// tile_order: optional int32 [batch * heads * query blocks], a permutation of the tiles (in the
// kernel's numbering: one (batch, head) at a time, query blocks from the last down) giving the
// order the persistent CTAs take them in; sas_runtime.kernels.ops.wrapper_tile_order.
// carry_last_product: each tile's last P V runs beside the next tile's first Q K^T (the same
// result; faster on long D128 tiles); sas_runtime.kernels.ops.carries_last_product.
// pair_tiles: CTAs run in pairs on query blocks 2 i and 2 i + 1 and share each K/V load (D128,
// an even count of query blocks, no tile_order); the two blocks of every pair must list the
// same key blocks (sas_runtime.kernels.ops.pairs_share_blocks), or the output is wrong.
SAS_TORCH_LIBRARY(sas, m) {
  m.def(
      "block_sparse_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor kv_num_blocks, "
      "Tensor kv_indices, Tensor full_kv_num_blocks, Tensor full_kv_indices, "
      "Tensor? document_ids, Tensor? kv_lengths, float scale, bool causal, int window, int global_tokens, "
      "Tensor? tile_order=None, bool carry_last_product=False, bool pair_tiles=False) "
      "-> (Tensor out, Tensor lse)");
#ifdef SAS_KERNEL_TRACE
  // bench/kernel_trace.py: the last call's timeline, in a build with SAS_KERNEL_TRACE=1.
  m.def("last_trace() -> Tensor", &last_trace);
#endif
}

SAS_TORCH_LIBRARY_IMPL(sas, CUDA, m) {
  m.impl("block_sparse_attention_fwd", &block_sparse_attention_fwd_cuda);
}

}  // namespace sas
