// Log-sum-exp merge of partial attention states (split-KV parts and cascade levels): one warp per
// (row, head) (merge_row.cuh). An empty part (lse -inf) adds nothing; all empty gives 0 and -inf. Reference: merge_states_ref.cpp.
#include "common/error.h"
#include "kernels/common/device.cuh"
#include "kernels/common/launch.cuh"
#include "kernels/cuda.h"
#include "kernels/merge_states/merge_row.cuh"

namespace cw::kern::cuda {

template <int PER>  // dimensions per lane: hd <= 32 * PER
__global__ void merge_states_kernel(const float* o_part, const float* lse_part, int slots, int rows, int H, int hd,
                                    uint16_t* o_bf16, float* o_f32, float* lse) {
  dev::pdl_trigger();
  dev::pdl_wait();
  const int w = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (w >= rows * H) return;
  const int r = w / H, h = w % H;
  float out[PER];
  const float l = dev::merge_row<PER>(o_part, lse_part, slots, rows, H, hd, r, h, out);
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    const int d = lane + 32 * i;
    if (d >= hd) break;
    const float v = l == -INFINITY ? 0.f : out[i];
    const int64_t o = (int64_t(r) * H + h) * hd + d;
    if (o_bf16) o_bf16[o] = dev::float_to_bf(v);
    if (o_f32) o_f32[o] = v;
  }
  if (lse && lane == 0) lse[int64_t(r) * H + h] = l;
}

void merge_states(const float* o_part, const float* lse_part, int slots, int rows, int H, int hd, uint16_t* o_bf16,
                  float* o_f32, float* lse, cudaStream_t s) {
  if (rows == 0) return;
  check(hd <= 128, "merge_states: head dimension ", hd, " above 128 is not built");
  const int warps = rows * H, blocks = (warps + 7) / 8;
  auto kernel = hd <= 32 ? merge_states_kernel<1> : hd <= 64 ? merge_states_kernel<2> : merge_states_kernel<4>;
  dev::launch_pdl(kernel, blocks, 256, 0, s, "merge_states kernel", o_part, lse_part, slots, rows, H, hd, o_bf16, o_f32,
                  lse);
}

}  // namespace cw::kern::cuda
