// Epilogue: writes the normalised output tile and the per-row log-sum-exp, rows past q_len
// skipped.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/array.h>

#include "params.h"

namespace sas {

using namespace cute;

// `out` is a thread's output accumulator, `coords` its (row, col) tile coordinates, and
// `coords_rc` the (rows, cols) view of the same coordinates.
template <class Traits, int kRows, class Output, class Coords, class CoordsRC>
CUTE_DEVICE void store_output(Output const& out, Coords const& coords, CoordsRC const& coords_rc,
                              const float (&lse)[kRows], BlockSparseFwdParams const& p,
                              int m_block, int head, int batch) {
  using Element = typename Traits::Element;
  using Pair = cutlass::Array<Element, 2>;
  const int q_offset = m_block * Traits::kBlockM;
  const int64_t row0 = (int64_t(batch) * p.heads + head) * p.q_len;
  Element* out_rows = static_cast<Element*>(p.out) + row0 * Traits::kHeadDim;
  CUTE_UNROLL
  for (int i = 0; i < size(out); i += 2) {
    const int q = q_offset + get<0>(coords(i));
    if (q < p.q_len) {
      // Values i and i + 1 are adjacent columns of one row: one 4-byte store.
      Pair pair;
      pair[0] = Element(out(i));
      pair[1] = Element(out(i + 1));
      *reinterpret_cast<Pair*>(out_rows + int64_t(q) * Traits::kHeadDim + get<1>(coords(i))) =
          pair;
    }
  }
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

}  // namespace sas
