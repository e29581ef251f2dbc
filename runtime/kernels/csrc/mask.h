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
// accumulator and of its tile coordinates. Each row's visible keys become column bounds within
// the block, so an element costs two or three compares against its column and a select;
// documents add a lookup per element. Whether global keys or documents can matter is decided
// once per block, so the common paths carry no per-element branches.
template <bool kApplyRules, class Scores, class Coords>
CUTE_DEVICE void apply_element_mask(Scores& scores_rc, Coords const& coords_rc, int q_offset,
                                    int kv_offset, int kv_len, ElementRules const& rules,
                                    int q_len) {
  auto mask_rows = [&](auto global_keys_here, auto with_documents) {
    constexpr bool kGlobalKeysHere = decltype(global_keys_here)::value;
    constexpr bool kWithDocuments = decltype(with_documents)::value;
    CUTE_UNROLL
    for (int r = 0; r < size<0>(scores_rc); ++r) {
      const int q = q_offset + get<0>(coords_rc(r, 0));
      // Columns in [first, end) are visible, and so are columns below global_end.
      int first = -kv_offset;  // keys >= 0
      int end = kv_len - kv_offset;
      int global_end = 0;
      if constexpr (kApplyRules) {
        const ElementRules::RowKeys keys = rules.row_keys(q);
        first = max(keys.first, 0) - kv_offset;
        end = min(keys.last, kv_len - 1) + 1 - kv_offset;
        global_end = min(keys.global_keys, kv_len) - kv_offset;
      }
      int q_document = -1;
      if constexpr (kWithDocuments) {
        q_document = q < q_len ? rules.document_ids[q] : -1;
      }
      CUTE_UNROLL
      for (int c = 0; c < size<1>(scores_rc); ++c) {
        const int col = get<1>(coords_rc(r, c));
        bool visible = col >= first && col < end;
        if constexpr (kGlobalKeysHere) {
          visible = visible || col < global_end;
        }
        if constexpr (kWithDocuments) {
          visible = visible && q_document == rules.document_ids[kv_offset + col];
        }
        if (!visible) {
          scores_rc(r, c) = -INFINITY;
        }
      }
    }
  };
  if constexpr (kApplyRules) {
    // Global keys can only be visible in a block that starts below them.
    const bool global_keys_here =
        rules.window >= 0 && kv_offset >= 0 && kv_offset < rules.global_tokens;
    if (rules.document_ids != nullptr) {
      if (global_keys_here) {
        mask_rows(cute::true_type{}, cute::true_type{});
      } else {
        mask_rows(cute::false_type{}, cute::true_type{});
      }
    } else if (global_keys_here) {
      mask_rows(cute::true_type{}, cute::false_type{});
    } else {
      mask_rows(cute::false_type{}, cute::false_type{});
    }
  } else {
    mask_rows(cute::false_type{}, cute::false_type{});
  }
}

}  // namespace sas
