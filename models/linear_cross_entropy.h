// Cross-entropy of an LM head without materialising the logits: loss = sum over rows of
// logsumexp(h W^T) - (h W^T)[target], rows with target -100 ignored, computed in chunks of rows so only a
// [chunk, V] block of logits exists at a time; the backward pass recomputes each block. The matrix products
// run in h's dtype (bf16 under mixed precision), the softmax statistics in fp32.
// `linear_cross_entropy_reference` is the plain twin (full logits) that tests compare against.
// Must not: change the loss's value beyond rounding, or keep [N, V] tensors alive.
#pragma once
#include <torch/torch.h>

namespace cw {

// fused: each block's statistics and gradient by the fused cross-entropy kernels (models/fused_ops.h), so no
// fp32 copy of a block exists either.
torch::Tensor linear_cross_entropy(const torch::Tensor& h, const torch::Tensor& weight, const torch::Tensor& targets,
                                   int64_t chunk_rows, bool fused = false);
torch::Tensor linear_cross_entropy_reference(const torch::Tensor& h, const torch::Tensor& weight,
                                             const torch::Tensor& targets);

}  // namespace cw
