// Fused training ops as LibTorch autograd functions: RoPE on the q/k/v product, SwiGLU, residual add + RMSNorm,
// and cross-entropy that never holds fp32 logits. On CUDA they launch the kernels of kernels/train_ops.h on the current stream; on the
// CPU they run the same item/row functions in a parallel loop. Storage fp32 or bf16, arithmetic fp32.
// References (the tests compare against them): apply_rope, torch::silu(g) * u, x + delta then at::rms_norm,
// torch's cross_entropy.
// Must not: be called with other dtypes (check fused_ops_support first) or hold state between calls.
#pragma once
#include <torch/torch.h>

#include <array>

namespace cw {

// The dtype X's matrix products run in: the autocast dtype while autocast is on for X's device, else X's.
torch::ScalarType compute_dtype(const torch::Tensor& x);

// Autocast off for a device type while alive, restored after (also on exceptions): for ops that cast their
// inputs explicitly so that their forward and backward passes agree.
class AutocastOff {
 public:
  explicit AutocastOff(c10::DeviceType type);
  ~AutocastOff();
  AutocastOff(const AutocastOff&) = delete;
  AutocastOff& operator=(const AutocastOff&) = delete;

 private:
  c10::DeviceType type_;
  bool was_on_;
};

// True when X's dtype (fp32, bf16) and device (CPU, CUDA in a CUDA build) have fused kernels.
bool fused_ops_support(const torch::Tensor& x);

// qkv [B, T, (heads + 2 kv_heads) * hd] (q heads, then k, then v; the last dimension contiguous), cos and sin
// [B, T, hd] from rope_tables. Returns q [B, T, heads, hd] and k, v [B, T, kv_heads, hd], q and k rotated.
// Consumes QKV: q and k are rotated in its storage and the three results are views of it (row stride qkv's
// width), so nothing may read qkv itself afterwards (the q/k/v product's output, read by nothing else).
std::array<torch::Tensor, 3> fused_rope_qkv(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin,
                                            int64_t heads, int64_t kv_heads);

// gate_up [..., 2F] (gate first) -> silu(gate) * up [..., F]; the backward pass recomputes silu from gate_up.
torch::Tensor fused_swiglu(const torch::Tensor& gate_up);

// down_proj(silu(gate) * up) with DOWN_WEIGHT [d, F], keeping only gate_up for the backward pass (h is
// recomputed there); under autocast the product runs in the autocast dtype.
torch::Tensor fused_swiglu_down(const torch::Tensor& gate_up, const torch::Tensor& down_weight);

// The residual add joined with the next RMSNorm: h = x + delta and y = h / rms(h) * w, y stored as OUT_DTYPE
// (bf16 under autocast). x is the fp32 residual stream, delta fp32 or bf16, w fp32 [d]. Returns {h, y}.
bool fused_add_rmsnorm_support(const torch::Tensor& x, const torch::Tensor& delta, const torch::Tensor& w);
std::array<torch::Tensor, 2> fused_add_rmsnorm(const torch::Tensor& x, const torch::Tensor& delta, const torch::Tensor& w,
                                               double eps, torch::ScalarType out_dtype);

// Sum over rows of -log softmax(logits)[target] as an fp32 scalar; rows whose target is kIgnoreIndex add 0.
// logits [N, V] (last dimension contiguous), targets [N]. overwrite_logits: the backward pass writes the
// gradient into the logits' storage (only when nothing else reads those logits afterwards).
torch::Tensor fused_cross_entropy_sum(const torch::Tensor& logits, const torch::Tensor& targets, bool overwrite_logits);

// The same without autograd, for callers that recompute logits (linear_cross_entropy): per-row loss and
// log-sum-exp (fp32 [N]) of LOGITS [N, V] (contiguous rows) and int64 contiguous TARGETS; then, in place,
// LOGITS = (softmax - onehot) * SCALE (a one-element tensor, read on the device).
std::pair<torch::Tensor, torch::Tensor> cross_entropy_rows(const torch::Tensor& logits, const torch::Tensor& targets);
void cross_entropy_grad_(const torch::Tensor& logits, const torch::Tensor& targets, const torch::Tensor& lse,
                         const torch::Tensor& scale);

}  // namespace cw
