// Epilogue: the normalised output tile goes through shared memory and leaves by TMA stores, one
// per consumer warpgroup for its own 64 rows, so that neither warpgroup waits for the other at
// a tile's end (rows past q_len are clipped by the tensor's bounds); the per-row log-sum-exp is
// stored directly.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "mask.h"
#include "params.h"

namespace sas {

using namespace cute;

// The first of the consumer warpgroups' named barriers, one per warpgroup (ids past CUTLASS's
// reserved ones).
constexpr int kEpilogueBarrier = 1;

// Nothing to do once the output is in shared memory (store_output's default).
struct NoHook {
  CUTE_DEVICE void operator()() const {}
};

// `out` is a thread's output accumulator, stored as `out * row_scale` per row; `tiled_pv` the
// P V MMA, `coords_rc` the (rows, cols) view of its tile coordinates; `thread` counts
// consumer threads; `in_shared` runs once the tile is in shared memory (the kernel's trace).
template <class Traits, int kRows, class Output, class TiledMma, class CoordsRC,
          class InShared = NoHook>
CUTE_DEVICE void store_output(typename Traits::TmaO const& tma_o,
                              typename Traits::SharedStorage& smem, Output const& out,
                              const float (&row_scale)[kRows], TiledMma const& tiled_pv,
                              CoordsRC const& coords_rc, const float (&lse)[kRows],
                              BlockSparseFwdParams const& p, int m_block, int head, int batch,
                              int thread, InShared const& in_shared = {}) {
  using Element = typename Traits::Element;
  constexpr int kWarpgroupRows = Traits::kRowsPerWarpgroup;
  const int warpgroup = thread / 128;
  const int barrier = kEpilogueBarrier + warpgroup;
  const bool issuer = thread % 128 == 0;
  Tensor sO = make_tensor(make_smem_ptr(smem.o.data()), typename Traits::SmemLayoutO{});
  // stmatrix: each warp writes 8x8 blocks of the fragment to the swizzled tile.
  auto smem_copy = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, tiled_pv);
  auto thr_copy = smem_copy.get_thread_slice(thread);
  Tensor converted = make_tensor_like<Element>(out);
  Tensor out_rc = make_tensor(out.data(), accumulator_rows_cols(out.layout()));
  Tensor converted_rc = make_tensor(converted.data(), accumulator_rows_cols(converted.layout()));
  CUTE_UNROLL
  for (int r = 0; r < kRows; ++r) {
    CUTE_UNROLL
    for (int c = 0; c < size<1>(out_rc); ++c) {
      converted_rc(r, c) = Element(out_rc(r, c) * row_scale[r]);
    }
  }
  // The warpgroup's previous store must have read its half before it is written again.
  if (issuer) {
    tma_store_wait<0>();
  }
  cutlass::arch::NamedBarrier::arrive_and_wait(128, barrier);
  copy(smem_copy, thr_copy.retile_S(converted), thr_copy.partition_D(sO));
  cutlass::arch::fence_view_async_shared();  // visible to the TMA unit
  cutlass::arch::NamedBarrier::arrive_and_wait(128, barrier);
  in_shared();
  if (issuer) {
    Tensor sO_half = make_tensor(make_smem_ptr(smem.o.data() + warpgroup * kWarpgroupRows *
                                                                   Traits::kHeadDim),
                                 typename Traits::SmemLayoutOHalf{});
    Tensor mO =
        tma_o.get_tma_tensor(make_shape(p.q_len, Int<Traits::kHeadDim>{}, p.heads, p.batch));
    Tensor gO = local_tile(mO(_, _, head, batch),
                           Shape<Int<kWarpgroupRows>, Int<Traits::kHeadDim>>{},
                           make_coord(m_block * Traits::kWarpgroups + warpgroup, 0));
    auto cta_tma = tma_o.get_slice(0);
    copy(tma_o, cta_tma.partition_S(sO_half), cta_tma.partition_D(gO));
    tma_store_arrive();
  }

  const int q_offset = m_block * Traits::kBlockM;
  const int64_t row0 = (int64_t(batch) * p.heads + head) * p.q_len;
  if (threadIdx.x % 4 == 0) {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const int q = q_offset + get<0>(coords_rc(r, 0));
      if (q < p.q_len) {
        p.lse[row0 + q] = lse[r];
      }
    }
  }
}

// Before the consumers exit: each warpgroup's last TMA store has read shared memory.
CUTE_DEVICE void finish_output_stores(int thread) {
  if (thread % 128 == 0) {
    tma_store_wait<0>();
  }
}

}  // namespace sas
