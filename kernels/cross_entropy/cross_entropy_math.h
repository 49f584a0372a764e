// Cross-entropy over rows of logits without an fp32 copy of them: the forward pass keeps one log-sum-exp per
// row (an online max and sum in fp32), the backward pass writes softmax - onehot, scaled by the incoming
// gradient, in the logits' own dtype (into the logits' storage when the caller allows it). The row functions
// here are the CPU path of models/fused_ops.cpp and share the merge rule with the CUDA kernel
// (cross_entropy.cu); the independent reference is torch's cross_entropy on fp32 logits.
// Must not: allocate or depend on LibTorch.
#pragma once
#include <math.h>

#include "kernels/common/common.h"

namespace cw::kern {

// Running (max, sum of exp(x - max)) of a set of logits; merge() combines two sets.
struct SoftmaxStat {
  float m = -INFINITY, s = 0.f;
};
CW_HD SoftmaxStat softmax_merge(SoftmaxStat a, SoftmaxStat b) {
  if (a.m == -INFINITY) return b;
  if (b.m == -INFINITY) return a;
  const float m = a.m > b.m ? a.m : b.m;
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}
CW_HD SoftmaxStat softmax_add(SoftmaxStat a, float x) {
  if (x > a.m) {
    a.s = (a.m == -INFINITY ? 0.f : a.s * expf(a.m - x)) + 1.f;
    a.m = x;
  } else {
    a.s += expf(x - a.m);
  }
  return a;
}

// A target outside [0, V) that is not ignore_index makes the row's loss NaN (visible, never silent).
CW_HD bool ce_ignored(int64_t target, int64_t ignore_index) { return target == ignore_index; }

template <typename T>
inline void cross_entropy_forward_row(const T* x, int64_t V, int64_t target, int64_t ignore_index, float* loss,
                                      float* lse) {
  SoftmaxStat st;
  for (int64_t j = 0; j < V; ++j) st = softmax_add(st, load_f(x, j));
  const float l = st.m + logf(st.s);
  *lse = l;
  if (ce_ignored(target, ignore_index)) *loss = 0.f;
  else if (target < 0 || target >= V) *loss = NAN;
  else *loss = l - load_f(x, target);
}

// grad may be x itself (each element is read before it is written).
template <typename T>
inline void cross_entropy_backward_row(const T* x, int64_t V, int64_t target, int64_t ignore_index, float lse,
                                       float g, T* grad) {
  if (ce_ignored(target, ignore_index)) g = 0.f;
  for (int64_t j = 0; j < V; ++j) {
    float p = expf(load_f(x, j) - lse) * g;
    if (j == target) p -= g;
    store_f(grad, j, p);
  }
}

}  // namespace cw::kern
