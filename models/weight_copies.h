// Low-precision copies of fp32 weights kept from step to step, so that mixed_linear's products read them instead
// of casting every weight in every forward pass: the optimizer (train/adamw.h, its multi-tensor kernel) writes
// the updated weight into its copy as it updates the weight. A copy is used only while the weight still holds
// what the copy was made from: the same tensor, the same storage, and the same version counter (every in-place
// LibTorch op bumps it: a checkpoint load, a ZeRO-1 broadcast's copy, a sparsity mask, ATen's optimizer, the
// reference optimizer loop); otherwise the weight is cast again into its place in the copy. The copies of the
// weights of one product (q/k/v, gate/up) are one buffer, the concatenation the product needs.
// Reference: the cast the copies replace (tests/test_fused_ops.cpp: the same losses and weights bit for bit with
// copies on and off, and a weight changed in place read afresh).
// Must not: hand out a copy of a weight changed since (by anything but the optimizer's kernel, which marks its
// copies current), or be relied on by code that writes weights through raw pointers without bumping versions.
#pragma once
#include <torch/torch.h>

namespace cw {

// WEIGHTS (fp32, one input width) as one [sum of rows, in] tensor in DTYPE: the kept copy where every weight's
// copy is current, else cast into it first (a new buffer the first time these weights meet). Undefined when the
// copies are off (CHUNKWISE_WEIGHT_COPIES=0), DTYPE is not bf16 (what the optimizer's kernel writes) or the
// weights are not fp32 matrices of one width on one device.
torch::Tensor weight_copy(at::TensorList weights, torch::ScalarType dtype);

// For the optimizer: the copy of WEIGHT (a view into its product's buffer), or undefined when it has none.
torch::Tensor registered_copy(const torch::Tensor& weight);
// The optimizer wrote WEIGHT's new value into registered_copy(WEIGHT) (without bumping the weight's version):
// the copy is current again.
void mark_copy_current(const torch::Tensor& weight);

bool weight_copies_enabled();  // CHUNKWISE_WEIGHT_COPIES, on unless "0" (read once)
void set_weight_copies(bool on);  // for tests
void clear_weight_copies();       // forget every copy (their buffers are freed when no product holds them)

struct WeightCopyStats {
  int64_t reused = 0;  // products that read kept copies
  int64_t cast = 0;    // products that cast at least one weight
};
WeightCopyStats weight_copy_stats();

}  // namespace cw
