// Element mask of one score tile: key bounds on every block that crosses the sequence end, and
// the pattern's rules (causal, window, global tokens, documents) on partial blocks only.
#pragma once

#include <climits>

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
// Causal and window leave each query one interval of keys; with a window, queries past the
// global tokens also see the first `global_tokens` keys (global tokens bypass the window only,
// and those keys lie before the query, so causal never hides them).
struct ElementRules {
  bool causal;
  int window;  // < 0: none
  int global_tokens;
  const int32_t* document_ids;  // this batch's row, or nullptr

  struct RowKeys {
    int first;        // keys in [first, last] are visible ...
    int last;
    int global_keys;  // ... and so are keys below global_keys
  };

  CUTE_DEVICE RowKeys row_keys(int q) const {
    RowKeys keys{INT_MIN, causal ? q : INT_MAX, 0};
    if (window >= 0 && q >= global_tokens) {
      keys.first = q - window;
      keys.last = min(keys.last, q + window);
      keys.global_keys = global_tokens;
    }
    return keys;
  }
};

// Sets masked scores to -inf. `scores_rc` and `coords_rc` are (rows, cols) views of the score
// accumulator and of its tile coordinates. Per element: two interval compares, plus a document
// lookup only when documents are given.
template <bool kApplyRules, class Scores, class Coords>
CUTE_DEVICE void apply_element_mask(Scores& scores_rc, Coords const& coords_rc, int q_offset,
                                    int kv_offset, int kv_len, ElementRules const& rules,
                                    int q_len) {
  CUTE_UNROLL
  for (int r = 0; r < size<0>(scores_rc); ++r) {
    const int q = q_offset + get<0>(coords_rc(r, 0));
    const ElementRules::RowKeys keys = rules.row_keys(q);
    const bool with_documents = kApplyRules && rules.document_ids != nullptr;
    const int q_document = with_documents && q < q_len ? rules.document_ids[q] : -1;
    CUTE_UNROLL
    for (int c = 0; c < size<1>(scores_rc); ++c) {
      const int k = kv_offset + get<1>(coords_rc(r, c));
      bool visible = k >= 0 && k < kv_len;
      if constexpr (kApplyRules) {
        visible = visible && ((k >= keys.first && k <= keys.last) || k < keys.global_keys);
        if (with_documents) {
          visible = visible && q_document == rules.document_ids[k];
        }
      }
      if (!visible) {
        scores_rc(r, c) = -INFINITY;
      }
    }
  }
}

}  // namespace sas
