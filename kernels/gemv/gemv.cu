// Matrix-vector products for decode (1 to 4 rows of x): bandwidth-bound, warps over output rows reading
// each bf16 weight row once in 16-byte loads, fp32 accumulation. What happens to a row's sums is the
// epilogue's choice: stored (optional fused residual, beta = 1), or, for pairs of rows one warp computes,
// RoPE with the KV append (the qkv product) or SwiGLU (the gate/up product), so decode runs no separate
// rope_append or swiglu kernel. One row of x with an input given or normalised goes to the streamed kernel
// (gemv_streamed.cuh) where the shape fits; the rest to the register kernel here. Reference: matmul_ref.cpp
// composed with rope_append_ref.cpp / swiglu_ref.cpp.
#include <algorithm>

#include "kernels/common/device.cuh"
#include "kernels/common/launch.cuh"
#include "common/env.h"
#include "common/error.h"
#include "kernels/cuda.h"
#include "kernels/gemv/gemv_rows.cuh"
#include "kernels/gemv/gemv_streamed.cuh"

namespace cw::kern::cuda {

// Warps stride over units, x given as 16-byte pieces (global or shared). Each warp holds the first kPre
// 16-byte pieces per lane of each row of its next unit in registers: the first unit's are loaded before the
// predecessor finishes (weights do not depend on it; programmatic dependent launch), later units' while the
// current one is reduced. With one row of x and one row per unit a 2,048-wide row is read whole that way.
constexpr int kWarpsPerBlock = 8, kBlocksPerSm = 3;

template <int T, int kRows>
constexpr int prefetch_pieces() {  // per row of the unit: 8, 4 or 2 pieces per warp lane in all, at least 1
  constexpr int per_unit = T == 1 ? 8 : (T == 2 ? 4 : 2);
  return per_unit / kRows > 0 ? per_unit / kRows : 1;
}

template <int kPre, int kRows>
struct UnitPieces {
  uint4 w[kRows][kPre];
  template <class Epi>
  __device__ __forceinline__ void load(const uint16_t* W, const Epi& epi, int u, int nvec, int in) {
    const int lane = threadIdx.x % 32;
    if (u >= epi.units()) return;
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      const uint4* wr = reinterpret_cast<const uint4*>(W + int64_t(epi.row(u, j)) * in);
#pragma unroll
      for (int i = 0; i < kPre; ++i)
        if (lane + 32 * i < nvec) w[j][i] = load_streaming(wr + lane + 32 * i);
    }
  }
};

template <int T, int kPre, class Epi>
__device__ __forceinline__ void gemv_units(const uint16_t* W, int in, const uint4* xv, const Epi& epi,
                                           UnitPieces<kPre, Epi::kRows>& pre) {
  constexpr int R = Epi::kRows;
  const int lane = threadIdx.x % 32, stride = gridDim.x * kWarpsPerBlock;
  const int nvec = in / 8, units = epi.units();
  for (int u = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32; u < units; u += stride) {
    float acc[R][T];
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const uint4* w = reinterpret_cast<const uint4*>(W + int64_t(epi.row(u, j)) * in);
#pragma unroll
      for (int t = 0; t < T; ++t) acc[j][t] = 0;
#pragma unroll
      for (int i = 0; i < kPre; ++i) {
        const int v = lane + 32 * i;
        if (v < nvec)
#pragma unroll
          for (int t = 0; t < T; ++t) acc[j][t] += dot8(pre.w[j][i], xv[t * nvec + v]);
      }
      int v = lane + 32 * kPre;
      for (; v + 96 < nvec; v += 128) {  // four loads in flight per lane
        uint4 w0 = load_streaming(w + v), w1 = load_streaming(w + v + 32), w2 = load_streaming(w + v + 64),
              w3 = load_streaming(w + v + 96);
#pragma unroll
        for (int t = 0; t < T; ++t)
          acc[j][t] += dot8(w0, xv[t * nvec + v]) + dot8(w1, xv[t * nvec + v + 32]) + dot8(w2, xv[t * nvec + v + 64]) +
                       dot8(w3, xv[t * nvec + v + 96]);
      }
      for (; v < nvec; v += 32) {
        uint4 w0 = load_streaming(w + v);
#pragma unroll
        for (int t = 0; t < T; ++t) acc[j][t] += dot8(w0, xv[t * nvec + v]);
      }
    }
    pre.load(W, epi, u + stride, nvec, in);  // the next unit's first pieces, in flight during the reductions
#pragma unroll
    for (int t = 0; t < T; ++t) {
      float s[R];
#pragma unroll
      for (int j = 0; j < R; ++j) s[j] = dev::warp_sum(acc[j][t]);
      if (lane == 0) epi.store(u, t, s, epi.prior(u, t));
    }
  }
}

template <int T, class Epi>
__global__ void __launch_bounds__(kWarpsPerBlock * 32, kBlocksPerSm) gemv_kernel(const uint16_t* W, int in, const uint16_t* x, Epi epi) {
  dev::pdl_trigger();
  constexpr int kPre = prefetch_pieces<T, Epi::kRows>();
  UnitPieces<kPre, Epi::kRows> pre;
  pre.load(W, epi, blockIdx.x * kWarpsPerBlock + threadIdx.x / 32, in / 8, in);
  dev::pdl_wait();
  gemv_units<T, kPre>(W, in, reinterpret_cast<const uint4*>(x), epi, pre);
}

// The input built per block in shared memory: kNorm = RMSNorm(x) * w, kSwiglu = silu(gate) * up (both as the
// standalone rmsnorm / swiglu kernels compute them, rounded to bf16), then the same product.
enum Prologue { kNorm, kSwiglu };
template <int T, Prologue P, class Epi>
__global__ void __launch_bounds__(kWarpsPerBlock * 32, kBlocksPerSm) gemv_prologue_kernel(const uint16_t* W, int in, const float* x,
                                                            const uint16_t* nw, float eps, Epi epi) {
  dev::pdl_trigger();
  constexpr int kPre = prefetch_pieces<T, Epi::kRows>();
  UnitPieces<kPre, Epi::kRows> pre;
  pre.load(W, epi, blockIdx.x * kWarpsPerBlock + threadIdx.x / 32, in / 8, in);
  dev::pdl_wait();
  extern __shared__ uint4 xs4[];
  uint16_t* xs = reinterpret_cast<uint16_t*>(xs4);
  for (int t = 0; t < T; ++t) {
    if (P == kNorm) {
      const float* xr = x + int64_t(t) * in;
      float ss = 0;
      for (int i = threadIdx.x; i < in; i += blockDim.x) ss += xr[i] * xr[i];
      ss = dev::block_sum(ss);
      const float inv = rsqrtf(ss / in + eps);
      for (int i = threadIdx.x; i < in; i += blockDim.x) xs[t * in + i] = dev::float_to_bf(dev::bf_to_float(nw[i]) * (xr[i] * inv));
    } else {
      const float* g = x + int64_t(t) * 2 * in;
      for (int i = threadIdx.x; i < in; i += blockDim.x) xs[t * in + i] = dev::float_to_bf(g[i] / (1.f + expf(-g[i])) * g[in + i]);
    }
  }
  __syncthreads();
  gemv_units<T, kPre>(W, in, xs4, epi, pre);
}

static int sm_count() {
  static const int sms = [] {
    int dev = 0, n = 0;
    cuda::check_cuda(cudaGetDevice(&dev), "gemv: reading the device");
    cuda::check_cuda(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), "gemv: reading the SM count");
    return n;
  }();
  return sms;
}

// Blocks: one warp per unit up to kBlocksPerSm resident blocks per SM, then warps take several units.
static int gemv_blocks(int units) {
  return std::max(1, std::min((units + kWarpsPerBlock - 1) / kWarpsPerBlock, sm_count() * kBlocksPerSm));
}

// One-row products stream their weights through shared memory (gemv_streamed.cuh) unless switched off:
// set_gemv_streamed, else CHUNKWISE_GEMV_STREAMED=0 in the environment.
static int streamed_setting = -1;
void set_gemv_streamed(bool on) { streamed_setting = on ? 1 : 0; }
bool gemv_streamed() {
  if (streamed_setting < 0) streamed_setting = env_int("CHUNKWISE_GEMV_STREAMED", 1) == 0 ? 0 : 1;
  return streamed_setting == 1;
}

// The streamed kernel's ring (shared memory per block, x included) and stage sizes in KB and its blocks per SM:
// set_gemv_stream_sizes, else CHUNKWISE_GEMV_STREAM_SMEM_KB / _STAGE_KB / _BLOCKS_PER_SM, else the defaults
// (docs/BENCHMARKS.md measures them).
static int stream_smem_kb = -1, stream_stage_kb = -1, stream_blocks_per_sm = -1;
void set_gemv_stream_sizes(int smem_kb, int stage_kb, int blocks_per_sm) {
  stream_smem_kb = smem_kb > 0 ? smem_kb : int(streamed::kSmemBudget / 1024);
  stream_stage_kb = stage_kb > 0 ? stage_kb : streamed::kStageTarget / 1024;
  stream_blocks_per_sm = blocks_per_sm > 0 ? blocks_per_sm : 1;
}

// Its smallest shared memory per block and how far its producer runs ahead of x, in KB: set_gemv_stream_start,
// else CHUNKWISE_GEMV_STREAM_MIN_SMEM_KB / _EARLY_KB, else the defaults (streamed::kMinSmem, kEarlyBytes).
// A huge early_kb (the environment's 100000) means no limit; min_smem_kb 1, blocks share SMs as they fit.
static int stream_min_smem_kb = -1, stream_early_kb = -1;
void set_gemv_stream_start(int min_smem_kb, int early_kb) {
  stream_min_smem_kb = min_smem_kb > 0 ? min_smem_kb : int(streamed::kMinSmem / 1024);
  stream_early_kb = early_kb > 0 ? early_kb : streamed::kEarlyBytes / 1024;
}

static int64_t streamed_launches = 0;
int64_t gemv_streamed_launches() { return streamed_launches; }

template <bool kNorm, class Epi>
static bool try_streamed(const uint16_t* W, int in, const void* x, const uint16_t* nw, float eps, int T, const Epi& epi,
                         cudaStream_t s) {
  if (T != 1 || !gemv_streamed() || !dev::aligned16(W) || !dev::aligned16(x) || (kNorm && !dev::aligned16(nw)))
    return false;
  if (stream_smem_kb < 0)
    set_gemv_stream_sizes(env_int("CHUNKWISE_GEMV_STREAM_SMEM_KB", 0), env_int("CHUNKWISE_GEMV_STREAM_STAGE_KB", 0),
                          env_int("CHUNKWISE_GEMV_STREAM_BLOCKS_PER_SM", 0));
  if (stream_min_smem_kb < 0)
    set_gemv_stream_start(env_int("CHUNKWISE_GEMV_STREAM_MIN_SMEM_KB", 0), env_int("CHUNKWISE_GEMV_STREAM_EARLY_KB", 0));
  if (!streamed::launch<kNorm>(W, in, x, nw, eps, epi, sm_count(), stream_stage_kb * 1024,
                               size_t(stream_smem_kb) * 1024, stream_blocks_per_sm, size_t(stream_min_smem_kb) * 1024,
                               stream_early_kb * 1024, s))
    return false;
  check_cuda(cudaGetLastError(), "streamed gemv kernel");
  ++streamed_launches;
  return true;
}

static void check_rows(int T, int in) {
  check(in % 8 == 0, "gemv: the inner dimension (", in, ") must be a multiple of 8");
  check(T >= 1 && T <= 4, "gemv: ", T, " rows; 1 to 4 are built (use cuBLAS above)");
}

template <Prologue P, class Epi>
static void launch_prologue(const uint16_t* W, int in, const float* x, const uint16_t* nw, float eps, int T,
                            const Epi& epi, cudaStream_t s) {
  check_rows(T, in);
  if constexpr (P == kNorm)
    if (try_streamed<true>(W, in, x, nw, eps, T, epi, s)) return;
  const int blocks = gemv_blocks(epi.units());
  const size_t smem = size_t(T) * in * 2;
  check(smem <= 48 * 1024, "gemv: ", T, " rows of ", in, " do not fit in shared memory");
  const char* what = "gemv kernel";
  switch (T) {
    case 1: dev::launch_pdl(gemv_prologue_kernel<1, P, Epi>, blocks, 256, smem, s, what, W, in, x, nw, eps, epi); break;
    case 2: dev::launch_pdl(gemv_prologue_kernel<2, P, Epi>, blocks, 256, smem, s, what, W, in, x, nw, eps, epi); break;
    case 3: dev::launch_pdl(gemv_prologue_kernel<3, P, Epi>, blocks, 256, smem, s, what, W, in, x, nw, eps, epi); break;
    default: dev::launch_pdl(gemv_prologue_kernel<4, P, Epi>, blocks, 256, smem, s, what, W, in, x, nw, eps, epi); break;
  }
  check_cuda(cudaGetLastError(), "gemv kernel");
}

void gemv_rmsnorm(const uint16_t* W, int out, int in, const float* x, const uint16_t* norm_w, float eps, int T,
                  float beta, float* y, cudaStream_t s) {
  launch_prologue<kNorm>(W, in, x, norm_w, eps, T, StoreRows{out, beta, y}, s);
}

void gemv_swiglu(const uint16_t* W, int out, int in, const float* gate_up, int T, float beta, float* y, cudaStream_t s) {
  launch_prologue<kSwiglu>(W, in, gate_up, nullptr, 0.f, T, StoreRows{out, beta, y}, s);
}

void gemv_rmsnorm_rope_append(const uint16_t* W, int in, const float* x, const uint16_t* norm_w, float eps, int T,
                              const int32_t* pos, const int32_t* slot, int H, int Hkv, int hd, float theta, float* qkv,
                              uint16_t* k_cache, uint16_t* v_cache, cudaStream_t s) {
  check(hd % 2 == 0, "gemv_rmsnorm_rope_append: the head dimension (", hd, ") must be even");
  launch_prologue<kNorm>(W, in, x, norm_w, eps, T, RopeAppendRows{H, Hkv, hd, theta, pos, slot, qkv, k_cache, v_cache}, s);
}

void gemv_rmsnorm_swiglu(const uint16_t* W, int ff, int in, const float* x, const uint16_t* norm_w, float eps, int T,
                         uint16_t* h, cudaStream_t s) {
  launch_prologue<kNorm>(W, in, x, norm_w, eps, T, SwigluRows{ff, h}, s);
}

void gemv(const uint16_t* W, int out, int in, const uint16_t* x, int T, float beta, float* y, cudaStream_t s) {
  check_rows(T, in);
  const StoreRows epi{out, beta, y};
  if (try_streamed<false>(W, in, x, nullptr, 0.f, T, epi, s)) return;
  const int blocks = gemv_blocks(out);
  switch (T) {
    case 1: dev::launch_pdl(gemv_kernel<1, StoreRows>, blocks, 256, 0, s, "gemv kernel", W, in, x, epi); break;
    case 2: dev::launch_pdl(gemv_kernel<2, StoreRows>, blocks, 256, 0, s, "gemv kernel", W, in, x, epi); break;
    case 3: dev::launch_pdl(gemv_kernel<3, StoreRows>, blocks, 256, 0, s, "gemv kernel", W, in, x, epi); break;
    default: dev::launch_pdl(gemv_kernel<4, StoreRows>, blocks, 256, 0, s, "gemv kernel", W, in, x, epi); break;
  }
  check_cuda(cudaGetLastError(), "gemv kernel");
}

}  // namespace cw::kern::cuda
