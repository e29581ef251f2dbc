// Element mask of one score tile: key bounds on every block that crosses the sequence end, and
// the pattern's rules (causal, window, global tokens, documents) on partial blocks only.
#pragma once

#include <cute/tensor.hpp>

#include "params.h"

namespace sas {

using namespace cute;

// ((2, 2, N/8), MMA_M, MMA_N) accumulator -> ((2, MMA_M), (2, N/8, MMA_N)): rows x columns.
template <class Layout>
CUTE_HOST_DEVICE constexpr auto accumulator_rows_cols(Layout const& acc) {
  static_assert(decltype(rank<0>(acc))::value == 3);
  return make_layout(make_layout(get<0, 1>(acc), get<1>(acc)),
                     make_layout(get<0, 0>(acc), get<0, 2>(acc), get<2>(acc)));
}

// sas_runtime.block_mask.ElementMask's predicate, less the key bound (checked separately).
struct ElementRules {
  bool causal;
  int window;  // < 0: none
  int global_tokens;  // bypass the window only
  const int32_t* document_ids;  // this batch's row, or nullptr

  CUTE_DEVICE bool allows(int q, int k, int q_document) const {
    bool visible = !causal || k <= q;
    if (window >= 0) {
      visible = visible && (abs(q - k) <= window || q < global_tokens || k < global_tokens);
    }
    if (document_ids != nullptr) {
      visible = visible && q_document == document_ids[k];
    }
    return visible;
  }
};

// Sets masked scores to -inf. `scores_rc` and `coords_rc` are (rows, cols) views of the score
// accumulator and of its tile coordinates.
template <bool kApplyRules, class Scores, class Coords>
CUTE_DEVICE void apply_element_mask(Scores& scores_rc, Coords const& coords_rc, int q_offset,
                                    int kv_offset, int kv_len, ElementRules const& rules,
                                    int q_len) {
  CUTE_UNROLL
  for (int r = 0; r < size<0>(scores_rc); ++r) {
    const int q = q_offset + get<0>(coords_rc(r, 0));
    int q_document = 0;
    if constexpr (kApplyRules) {
      if (rules.document_ids != nullptr) {
        q_document = q < q_len ? rules.document_ids[q] : -1;
      }
    }
    CUTE_UNROLL
    for (int c = 0; c < size<1>(scores_rc); ++c) {
      const int k = kv_offset + get<1>(coords_rc(r, c));
      bool visible = k >= 0 && k < kv_len;
      if constexpr (kApplyRules) {
        visible = visible && rules.allows(q, k, q_document);
      }
      if (!visible) {
        scores_rc(r, c) = -INFINITY;
      }
    }
  }
}

}  // namespace sas
