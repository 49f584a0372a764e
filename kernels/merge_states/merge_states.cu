// Log-sum-exp merge of partial attention states (split-KV parts and cascade levels): one warp per
// (row, head). An empty part (lse -inf) adds nothing; all empty gives 0 and -inf. Reference: merge_states_ref.cpp.
#include "kernels/common/device.cuh"
#include "kernels/common/launch.cuh"
#include "kernels/cuda.h"

namespace cw::kern::cuda {

__global__ void merge_states_kernel(const float* o_part, const float* lse_part, int slots, int rows, int H, int hd,
                                    uint16_t* o_bf16, float* o_f32, float* lse) {
  dev::pdl_trigger();
  dev::pdl_wait();
  const int w = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (w >= rows * H) return;
  const int r = w / H, h = w % H;
  float m = -INFINITY;
  for (int s = 0; s < slots; ++s) m = fmaxf(m, lse_part[(int64_t(s) * rows + r) * H + h]);
  float z = 0;
  for (int s = 0; s < slots; ++s) {
    const float l = lse_part[(int64_t(s) * rows + r) * H + h];
    z += m == -INFINITY ? 0.f : expf(l - m);
  }
  for (int d = lane; d < hd; d += 32) {
    float acc = 0;
    if (z > 0)
      for (int s = 0; s < slots; ++s) {
        const int64_t idx = (int64_t(s) * rows + r) * H + h;
        const float wgt = expf(lse_part[idx] - m);
        if (wgt > 0) acc += wgt * o_part[idx * hd + d];
      }
    const float v = z > 0 ? acc / z : 0.f;
    const int64_t o = (int64_t(r) * H + h) * hd + d;
    if (o_bf16) o_bf16[o] = dev::float_to_bf(v);
    if (o_f32) o_f32[o] = v;
  }
  if (lse && lane == 0) lse[int64_t(r) * H + h] = z > 0 ? m + logf(z) : -INFINITY;
}

void merge_states(const float* o_part, const float* lse_part, int slots, int rows, int H, int hd, uint16_t* o_bf16,
                  float* o_f32, float* lse, cudaStream_t s) {
  if (rows == 0) return;
  const int warps = rows * H, blocks = (warps + 7) / 8;
  dev::launch_pdl(merge_states_kernel, blocks, 256, 0, s, "merge_states kernel", o_part, lse_part, slots, rows, H, hd,
                  o_bf16, o_f32, lse);
}

}  // namespace cw::kern::cuda
