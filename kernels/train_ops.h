// Launchers of the fused CUDA kernels used in training (rope_qkv/, swiglu_grad/, cross_entropy/,
// add_rmsnorm/, adamw/): device
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

// q and k of the q/k/v rows rotated into OUT (rows of the same stride; may be qkv itself, in place); v is
// neither read nor written.
void rope_qkv_forward(Storage st, const void* qkv, const float* cos, const float* sin, const RopeQkvShape& shape,
                      void* out, cudaStream_t s);
void rope_qkv_backward(Storage st, const void* dq, const void* dk, const void* dv, const float* cos, const float* sin,
                       const RopeQkvShape& shape, void* dqkv, cudaStream_t s);

// AdamW (adamw_math.h) over COUNT fp32 tensors of SIZES elements: params, grads, exp_avg, exp_avg_sq. The
// device scalars: lr, step (the count including this step), skip (nullable: nothing changes when it holds a
// non-zero value) and divisor (nullable: the gradients are divided by it as they are read; they stay unchanged).
struct AdamWDevice {
  const float* lr = nullptr;
  const float* step = nullptr;
  const float* skip = nullptr;
  const float* divisor = nullptr;
};
constexpr int kAdamWTensors = 48;  // tensors per launch (their pointers travel in the kernel's parameters)
// BF16_COPIES (nullable, and each entry nullable): where the updated parameter is also written in bf16.
void adamw_update(int count, float* const* params, const float* const* grads, float* const* exp_avg,
                  float* const* exp_avg_sq, uint16_t* const* bf16_copies, const int64_t* sizes,
                  const AdamWDevice& scalars, double beta1, double beta2, float eps, float weight_decay,
                  cudaStream_t s);

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

// h = x + delta (fp32 [rows][d]) and y = h / rms(h) * w in y's storage; rstd fp32 [rows].
constexpr int kAddRmsNormMaxDim = 4096;
void add_rmsnorm_forward(Storage delta_st, Storage y_st, const float* x, const void* delta, const float* w,
                         int64_t rows, int d, float eps, float* h, void* y, float* rstd, cudaStream_t s);
// dx (fp32) and ddelta (delta's storage) from dy and dh_next (nullable); dw_partial fp32
// [add_rmsnorm_backward_blocks(rows)][d], to be summed over its first dimension. d <= kAddRmsNormMaxDim.
int add_rmsnorm_backward_blocks(int64_t rows);
void add_rmsnorm_backward(Storage delta_st, Storage y_st, const float* h, const float* w, const float* rstd,
                          const void* dy, const float* dh_next, int64_t rows, int d, float* dx, void* ddelta,
                          float* dw_partial, cudaStream_t s);

}  // namespace cw::kern::cuda
