// Activation checkpointing: y = fn(x) whose backward pass runs fn again (with gradients) instead of keeping
// fn's activations; only x is kept. The recompute runs under the autocast state of the first pass and from the
// random generator state it started with (the CPU's, or x's CUDA device's: dropout draws the same masks), and
// its backward pass adds the gradients of fn's parameters to their .grad (a re-entrant backward, as PyTorch's
// torch.utils.checkpoint with use_reentrant=True).
// Must not: wrap a FN that draws from a generator other than x's device's, or one whose outputs other than y
// are read later (only y gets a graph).
#pragma once
#include <torch/torch.h>

#include <functional>

namespace cw {

torch::Tensor recompute_in_backward(std::function<torch::Tensor(const torch::Tensor&)> fn, const torch::Tensor& x);

}  // namespace cw
