// Rotate-half RoPE of one pair (x[i], x[i + hd/2]) at one position, shared by every CUDA kernel that
// applies it to decode/prefill rows (rope_append.cu, the qkv product's epilogue in gemv_rows.cuh, decode
// attention with RoPE and the KV append inside), so that a fused path rounds exactly as the separate kernel.
// Explicit fused multiply-adds: the compiler may not contract the two kernels' expressions differently.
// Must not: hold training RoPE (rope_qkv_math.h, tables from the host) or anything but the per-pair math.
#pragma once

namespace cw::kern::dev {

// The angle of pair i (0 <= i < hd/2) at position pos: pos * theta^(-2i/hd).
__device__ __forceinline__ void rope_angle(float pos, int i, int hd, float theta, float* sn, float* cs) {
  const float inv_freq = powf(theta, -float(2 * i) / float(hd));
  sincosf(pos * inv_freq, sn, cs);
}
// y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin.
__device__ __forceinline__ void rope_rotate(float x1, float x2, float sn, float cs, float* y1, float* y2) {
  *y1 = __fmaf_rn(x1, cs, -__fmul_rn(x2, sn));
  *y2 = __fmaf_rn(x2, cs, __fmul_rn(x1, sn));
}

}  // namespace cw::kern::dev
