// Matrix products of the training step with the cuBLASLt algorithm of each shape chosen by timing, instead of
// cuBLAS's heuristic default (what at::mm runs). The first product of a shape (sizes, layouts, output dtype) that
// is not being captured into a CUDA graph times at::mm and cuBLASLt's heuristic candidates on its own operands
// and keeps the fastest (a candidate must beat at::mm by 2 %); later products of that shape, captured or not,
// run the choice. A shape first seen during a capture runs at::mm. Choices live for the process, so two runs
// (or a run and its resume in another process) may sum in different orders: results agree to rounding, not
// bitwise, as with cuDNN's benchmark mode.
// Taken: CUDA, bf16 operands, each row-major or the transpose of a row-major tensor, 16-byte aligned, output
// bf16 or fp32, CHUNKWISE_TUNED_PRODUCTS=1. Anything else is at::mm itself (the reference the GPU test compares
// with, and what the CPU build always runs).
// Must not: change anything but the summation order of the product, or time anything inside a capture.
#pragma once
#include <torch/torch.h>

#include <optional>
#include <string>

namespace cw {

// a [M, K] · b [K, N] as `out` (a's dtype when not given): at::mm(a, b) or at::mm(a, b, out).
torch::Tensor tuned_mm(const torch::Tensor& a, const torch::Tensor& b, std::optional<torch::ScalarType> out = {});

// Whether tuned_mm may choose algorithms in this process (CHUNKWISE_TUNED_PRODUCTS=1; read once).
bool tuned_products_enabled();
// For tests: turn the tuning on or off in this process, whatever the environment says.
void set_tuned_products(bool on);

// Shapes tuned so far, how many run a cuBLASLt candidate instead of at::mm, and the microseconds that saves
// over one product of each; one JSON line per shape with `jsonl` (for bench train --profile).
std::string tuned_products_summary(bool jsonl = false);

}  // namespace cw
