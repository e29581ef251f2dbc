// Online softmax over score tiles in float32 (base-2 exponentials), FlashAttention style: each
// thread keeps the running max and sum of its rows, rescales the output accumulator when the
// max grows, and finishes with the normaliser and the log-sum-exp.
#pragma once

#include <cmath>

#include <cute/tensor.hpp>

namespace sas {

using namespace cute;

// The four threads of a quad hold the same rows of an SM90 accumulator.
CUTE_DEVICE float quad_allreduce_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
}

CUTE_DEVICE float quad_allreduce_sum(float x) {
  x += __shfl_xor_sync(0xffffffff, x, 1);
  return x + __shfl_xor_sync(0xffffffff, x, 2);
}

template <int kRows>
struct OnlineSoftmax {
  float row_max[kRows];  // in units of score * scale * log2(e)
  float row_sum[kRows];  // this thread's partial sum; reduced over the quad at the end
  float scale_log2;

  CUTE_DEVICE explicit OnlineSoftmax(float scale_log2_) : scale_log2(scale_log2_) {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      row_max[r] = -INFINITY;
      row_sum[r] = 0.f;
    }
  }

  // Turns scores into unnormalised probabilities in place, updates the row sums, and returns
  // in `correction` the factor the output rows must be rescaled by (see `rescale`); split so
  // that this part can run while the previous block's P V product is still in flight. Returns
  // whether any of this thread's rows raised its max (otherwise every correction is 1, and
  // the output needs no rescale).
  template <class Scores>
  CUTE_DEVICE bool update(Scores& scores_rc, float (&correction)[kRows]) {
    bool moved = false;
    static_assert(decltype(size<0>(scores_rc))::value == kRows);
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      float block_max = -INFINITY;
      CUTE_UNROLL
      for (int c = 0; c < size<1>(scores_rc); ++c) {
        block_max = fmaxf(block_max, scores_rc(r, c));
      }
      block_max = quad_allreduce_max(block_max) * scale_log2;
      moved |= block_max > row_max[r];
      const float new_max = fmaxf(row_max[r], block_max);
      // A row that has seen only masked keys keeps max -inf: use 0 so exp2 gives 0, not NaN.
      const float base = new_max == -INFINITY ? 0.f : new_max;
      correction[r] = exp2f(row_max[r] - base);
      row_max[r] = new_max;
      float sum = 0.f;
      CUTE_UNROLL
      for (int c = 0; c < size<1>(scores_rc); ++c) {
        const float p = exp2f(scores_rc(r, c) * scale_log2 - base);
        scores_rc(r, c) = p;
        sum += p;
      }
      row_sum[r] = row_sum[r] * correction[r] + sum;
    }
    return moved;
  }

  template <class Output>
  CUTE_DEVICE static void rescale(Output& out_rc, const float (&correction)[kRows]) {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      CUTE_UNROLL
      for (int c = 0; c < size<1>(out_rc); ++c) {
        out_rc(r, c) *= correction[r];
      }
    }
  }

  // Writes what each output row is to be multiplied by (1 / its sum; 0 for rows that saw no
  // key) and the natural-log LSE per row (-inf for those rows). The output itself is left
  // alone: the epilogue scales it as it converts (when a tile's last product is carried into
  // the next tile, its output is still being written by that product here).
  CUTE_DEVICE void finish(float (&row_scale)[kRows], float (&lse)[kRows]) {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const float sum = quad_allreduce_sum(row_sum[r]);
      const bool seen = sum > 0.f;
      row_scale[r] = seen ? 1.f / sum : 0.f;
      lse[r] = seen ? (row_max[r] + log2f(sum)) * float(M_LN2) : -INFINITY;
    }
  }

  // The same, with the output rows divided by their sums in place.
  template <class Output>
  CUTE_DEVICE void finish(Output& out_rc, float (&lse)[kRows]) {
    float row_scale[kRows];
    finish(row_scale, lse);
    rescale(out_rc, row_scale);
  }
};

}  // namespace sas
