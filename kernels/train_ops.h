// Launchers of the fused CUDA kernels used in training (rope_qkv/, swiglu_grad/, cross_entropy/): device
// pointers, LibTorch's current stream passed in. Storage is fp32 or bf16 (uint16_t bits); arithmetic fp32.
// Each kernel's item or row functions run on the CPU too (models/fused_ops.cpp), and the GPU tests compare
// both with LibTorch's unfused ops.
// Must not: allocate, synchronise, or include LibTorch (the wrappers in models/fused_ops.cpp do that).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/rope_qkv/rope_qkv_math.h"

namespace cw::kern::cuda {

enum class Storage { F32, BF16 };

void rope_qkv_forward(Storage st, const void* qkv, const float* cos, const float* sin, const RopeQkvShape& shape,
                      void* q, void* k, void* v, cudaStream_t s);
void rope_qkv_backward(Storage st, const void* dq, const void* dk, const void* dv, const float* cos, const float* sin,
                       const RopeQkvShape& shape, void* dqkv, cudaStream_t s);

void swiglu_forward(Storage st, const void* gate_up, int64_t rows, int64_t ff, void* h, cudaStream_t s);
void swiglu_backward(Storage st, const void* gate_up, const void* dh, int64_t rows, int64_t ff, void* dgate_up,
                     cudaStream_t s);

// logits [rows][V] with row stride `stride` (elements); loss and lse fp32 [rows].
void cross_entropy_forward(Storage st, const void* logits, int64_t rows, int64_t V, int64_t stride,
                           const int64_t* targets, int64_t ignore_index, float* loss, float* lse, cudaStream_t s);
// grad [rows][V] (row stride grad_stride; may be logits itself) = (softmax - onehot) * *scale (device scalar).
void cross_entropy_backward(Storage st, const void* logits, int64_t rows, int64_t V, int64_t stride,
                            const int64_t* targets, int64_t ignore_index, const float* lse, const float* scale,
                            void* grad, int64_t grad_stride, cudaStream_t s);

}  // namespace cw::kern::cuda
