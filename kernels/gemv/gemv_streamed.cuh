// One-row matrix-vector products (batch-1 decode) whose weights stream through a shared-memory ring: per
// block one producer thread copies whole weight rows with bulk asynchronous copies (cp.async.bulk, the TMA
// unit) into ring stages completed by mbarriers, ahead of sixteen consumer warps, each computing whole units
// (a unit's rows, reduced, then its epilogue) against x in shared memory. The producer starts at the kernel's
// first instruction, before the predecessor has finished (programmatic dependent launch; weights never depend
// on it), but only 64 KB before the consumers have x: more would sit in front of x's loads. One block per SM
// with a ring of about 200 KB (six stages of 32 KB in flight) measured fastest, and small products' blocks
// ask for 116 KB so that two never share an SM; rings of 110 KB, which let the next product's blocks be
// resident beside this one's and fill their rings early, were slower (docs/BENCHMARKS.md). Reference: the
// register kernel in gemv.cu (same epilogues, gemv_rows.cuh) and through it matmul_ref.cpp; the GPU tests
// compare both on every epilogue.
// Must not: read x or step metadata, or write anything, before pdl_wait() (weights, the rows' and the norm's,
// may be read earlier: nothing writes them);
// take rows wider than kMaxIn or units larger than a stage (plan() says which shapes it takes).
#pragma once
#include <algorithm>
#include <cstdint>

#include "kernels/common/device.cuh"
#include "kernels/common/launch.cuh"
#include "kernels/cuda.h"
#include "kernels/gemv/gemv_rows.cuh"

namespace cw::kern::cuda {
namespace streamed {

constexpr int kConsumerWarps = 16, kConsumers = kConsumerWarps * 32, kThreads = kConsumers + 32;
constexpr int kMaxIn = 8192;               // x (bf16) is held in shared memory
constexpr int kMaxStages = 16;
constexpr int kStageTarget = 32 * 1024;    // bytes per stage aimed at (whole units)
constexpr size_t kSmemBudget = 200 * 1024;  // one block per SM, a deep ring (faster than two of 110 KB)
constexpr int kMaxPriors = kConsumers;       // a block's residual values read with x (more: read per unit)
// Asked for by every block whatever its ring (see launch()): more than half an SM's shared memory.
constexpr size_t kMinSmem = 116 * 1024;
// The producer's start before x is loaded: up to this many bytes, then it waits for the consumers' x_ready.
constexpr int kEarlyBytes = 64 * 1024;

struct Plan {
  int blocks = 0, units_per_stage = 0, stages = 0, ring_stages = 0;  // stages: of the whole product
  int stage_bytes = 0, ring_offset = 0;
  int early_stages = 0;  // stages the producer loads before x is in shared memory (0: no limit)
  size_t smem = 0;
  bool ok() const { return blocks > 0; }
};

// The launch for `units` units of `rows_per_unit` rows of `in` bf16 weights, or !ok() where it does not apply.
// Stages of about stage_target bytes (whole units) go to the blocks in turn (stage g to block g % blocks), so
// at any moment the blocks read neighbouring rows; each block's ring takes what fits in smem_budget bytes.
// blocks_per_sm: the grid is up to that many blocks per SM (each with its own ring of smem_budget).
inline Plan plan(int units, int rows_per_unit, int in, int sms, int stage_target = kStageTarget,
                 size_t smem_budget = kSmemBudget, int blocks_per_sm = 1) {
  Plan p;
  const int row_bytes = in * 2, unit_bytes = rows_per_unit * row_bytes;
  if (units <= 0 || in <= 0 || in % 8 != 0 || in > kMaxIn || unit_bytes > 2 * kStageTarget) return p;
  p.units_per_stage = std::max(1, stage_target / unit_bytes);
  p.stage_bytes = p.units_per_stage * unit_bytes;
  p.stages = (units + p.units_per_stage - 1) / p.units_per_stage;
  const int blocks = std::min(sms * std::max(1, blocks_per_sm), p.stages);
  const int stages_per_block = (p.stages + blocks - 1) / blocks;
  const int header = 2 * kMaxStages * 8;
  p.ring_offset = (header + row_bytes + 127) / 128 * 128;  // the barriers, then x, then the ring
  if (size_t(p.ring_offset) + size_t(p.stage_bytes) > smem_budget) return Plan{};
  const int fit = int((smem_budget - size_t(p.ring_offset)) / size_t(p.stage_bytes));
  p.ring_stages = std::min({kMaxStages, fit, stages_per_block});
  p.smem = size_t(p.ring_offset) + size_t(p.ring_stages) * size_t(p.stage_bytes);
  p.blocks = blocks;
  return p;
}

__device__ __forceinline__ uint32_t smem_u32(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}
__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, unsigned parity) {
  const uint32_t a = smem_u32(bar);
  uint32_t done = 0;
  while (!done)
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(a), "r"(parity)
        : "memory");
}
// bytes (a multiple of 16) from global src to shared dst (both 16-byte aligned), counted on bar.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, unsigned bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_u32(dst)),
               "l"(src), "r"(bytes), "r"(smem_u32(bar))
               : "memory");
}
__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 1, %0;" ::"n"(kConsumers) : "memory"); }

// Sum over the consumer threads (every consumer gets it).
__device__ __forceinline__ float consumers_sum(float v) {
  __shared__ float part[kConsumerWarps];
  v = dev::warp_sum(v);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  consumers_sync();
  float s = 0;
#pragma unroll
  for (int w = 0; w < kConsumerWarps; ++w) s += part[w];
  return s;
}

__device__ __forceinline__ uint32_t pack_bf2(float a, float b) {
  return uint32_t(dev::float_to_bf(a)) | (uint32_t(dev::float_to_bf(b)) << 16);
}

// Pieces of 8 elements each consumer thread holds while it builds x: rows of up to kMaxIn.
constexpr int kPiecesPerThread = (kMaxIn / 8 + kConsumers - 1) / kConsumers;

// The norm weights' pieces of this consumer thread (piece v = threadIdx.x + i * kConsumers). Weights: read before
// pdl_wait(), while the previous kernel still runs.
__device__ __forceinline__ void norm_pieces(const uint16_t* nw, int in, uint4 (&w)[kPiecesPerThread]) {
#pragma unroll
  for (int i = 0; i < kPiecesPerThread; ++i) {
    const int v = threadIdx.x + i * kConsumers;
    w[i] = v < in / 8 ? *reinterpret_cast<const uint4*>(nw + 8 * v) : uint4{};
  }
}

// x as bf16 in shared memory (xs, in / 8 pieces), built by the consumer threads: copied (kNorm false: x is
// bf16 [in]) or RMSNorm(x) * norm_w rounded to bf16 (x fp32 [in], nw the thread's norm_pieces), as the rmsnorm
// kernel computes it. Each thread reads its pieces of x once and keeps them for the scaling: one round trip to
// L2 after the predecessor, not two.
template <bool kNorm>
__device__ __forceinline__ void x_into_smem(const void* x, int in, const uint4 (&nw)[kPiecesPerThread], float eps,
                                            uint4* xs) {
  const int nvec = in / 8;
  if constexpr (!kNorm) {
    for (int v = threadIdx.x; v < nvec; v += kConsumers) xs[v] = __ldcg(static_cast<const uint4*>(x) + v);
  } else {
    const float4* xf = static_cast<const float4*>(x);
    float4 a[kPiecesPerThread], b[kPiecesPerThread];
    float ss = 0;
#pragma unroll
    for (int i = 0; i < kPiecesPerThread; ++i) {
      const int v = threadIdx.x + i * kConsumers;
      if (v < nvec) {
        a[i] = __ldcg(xf + 2 * v), b[i] = __ldcg(xf + 2 * v + 1);
        ss += a[i].x * a[i].x + a[i].y * a[i].y + a[i].z * a[i].z + a[i].w * a[i].w + b[i].x * b[i].x +
              b[i].y * b[i].y + b[i].z * b[i].z + b[i].w * b[i].w;
      }
    }
    const float inv = rsqrtf(consumers_sum(ss) / float(in) + eps);
#pragma unroll
    for (int i = 0; i < kPiecesPerThread; ++i) {
      const int v = threadIdx.x + i * kConsumers;
      if (v >= nvec) continue;
      const float2 w0 = dev::bf2_to_float2(nw[i].x), w1 = dev::bf2_to_float2(nw[i].y), w2 = dev::bf2_to_float2(nw[i].z),
                   w3 = dev::bf2_to_float2(nw[i].w);
      uint4 o;
      o.x = pack_bf2(w0.x * (a[i].x * inv), w0.y * (a[i].y * inv));
      o.y = pack_bf2(w1.x * (a[i].z * inv), w1.y * (a[i].w * inv));
      o.z = pack_bf2(w2.x * (b[i].x * inv), w2.y * (b[i].y * inv));
      o.w = pack_bf2(w3.x * (b[i].z * inv), w3.y * (b[i].w * inv));
      xs[v] = o;
    }
  }
  consumers_sync();
}

// Block b takes stages b, b + blocks, ... (units_per_stage whole units each) through ring_stages slots. A warp
// computes whole units: the block's n-th unit goes to consumer warp n % kConsumerWarps, which reduces its rows
// and calls the epilogue itself; every consumer warp releases every stage after its units in it.
template <bool kNorm, class Epi>
__global__ void __launch_bounds__(kThreads, 2)
    gemv_streamed_kernel(const uint16_t* W, int in, const void* x, const uint16_t* nw, float eps, Epi epi, Plan p) {
  dev::pdl_trigger();
  constexpr int R = Epi::kRows;
  extern __shared__ __align__(128) unsigned char smem[];
  uint64_t* full = reinterpret_cast<uint64_t*>(smem);
  uint64_t* empty = full + kMaxStages;
  uint4* xs = reinterpret_cast<uint4*>(smem + 2 * kMaxStages * 8);
  unsigned char* ring = smem + p.ring_offset;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, units = epi.units(), ups = p.units_per_stage;
  const int n_stages = (p.stages - int(blockIdx.x) + int(gridDim.x) - 1) / int(gridDim.x);
  auto first_unit = [&](int s) { return (s * int(gridDim.x) + int(blockIdx.x)) * ups; };  // of the block's stage s
  auto stage_units = [&](int s) { return min(ups, units - first_unit(s)); };
  const unsigned row_bytes = unsigned(in) * 2u;
  __shared__ uint64_t x_ready;  // the consumers have x (and the epilogue's inputs): the producer may run ahead
  __shared__ float priors[kMaxPriors];
  if (threadIdx.x == 0) {
    for (int s = 0; s < p.ring_stages; ++s) mbar_init(full + s, 1), mbar_init(empty + s, kConsumerWarps);
    mbar_init(&x_ready, 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  if (warp == kConsumerWarps) {  // the producer: weights only, so no wait for the predecessor
    if (lane == 0)
      for (int s = 0; s < n_stages; ++s) {
        const int slot = s % p.ring_stages, use = s / p.ring_stages;
        if (s == p.early_stages && s > 0) mbar_wait(&x_ready, 0);
        if (use > 0) mbar_wait(empty + slot, unsigned(use - 1) & 1u);
        const int u0 = first_unit(s), nu = stage_units(s);
        unsigned char* dst = ring + size_t(slot) * size_t(p.stage_bytes);
        mbar_arrive_expect_tx(full + slot, unsigned(nu * R) * row_bytes);
        for (int k = 0; k < nu; ++k)
#pragma unroll
          for (int j = 0; j < R; ++j)
            bulk_copy(dst + size_t(k * R + j) * row_bytes, W + int64_t(epi.row(u0 + k, j)) * in, row_bytes, full + slot);
      }
    return;
  }

  uint4 nw_pieces[kPiecesPerThread];
  if constexpr (kNorm) norm_pieces(nw, in, nw_pieces);
  dev::pdl_wait();
  // The epilogue's inputs in the same round trip as x: row 0's step metadata, and the old values of this
  // block's outputs (a residual) where they fit priors[].
  const Epi ep = epi.with_row0();
  const int block_units = n_stages * ups;
  const bool preloaded = block_units <= kMaxPriors;
  float my_prior = 0.f;
  if (preloaded && int(threadIdx.x) < block_units) {
    const int u = first_unit(int(threadIdx.x) / ups) + int(threadIdx.x) % ups;
    if (u < units) my_prior = ep.prior(u, 0);
  }
  x_into_smem<kNorm>(x, in, nw_pieces, eps, xs);
  if (preloaded && int(threadIdx.x) < block_units) priors[threadIdx.x] = my_prior;
  consumers_sync();
  if (threadIdx.x == 0) mbar_arrive(&x_ready);
  const int nvec = in / 8;
  for (int s = 0; s < n_stages; ++s) {
    const int slot = s % p.ring_stages, nu = stage_units(s);
    mbar_wait(full + slot, unsigned(s / p.ring_stages) & 1u);
    const uint4* st = reinterpret_cast<const uint4*>(ring + size_t(slot) * size_t(p.stage_bytes));
    for (int k = ((warp - s * ups) % kConsumerWarps + kConsumerWarps) % kConsumerWarps; k < nu; k += kConsumerWarps) {
      const int u = first_unit(s) + k;
      const float prior = lane != 0 ? 0.f : preloaded ? priors[s * ups + k] : ep.prior(u, 0);  // in flight during the arithmetic
      const uint4* row = st + size_t(k * R) * nvec;            // the unit's rows, one after another
      float p[R][4] = {};
      int v = lane;
      for (; v + 96 < nvec; v += 128) {  // four pieces of x, shared by the unit's rows, and 4 R of W in flight
        const uint4 x0 = xs[v], x1 = xs[v + 32], x2 = xs[v + 64], x3 = xs[v + 96];
#pragma unroll
        for (int j = 0; j < R; ++j) {
          const uint4* r = row + size_t(j) * nvec;
          p[j][0] += dot8(r[v], x0), p[j][1] += dot8(r[v + 32], x1), p[j][2] += dot8(r[v + 64], x2),
              p[j][3] += dot8(r[v + 96], x3);
        }
      }
      for (; v < nvec; v += 32) {
        const uint4 x0 = xs[v];
#pragma unroll
        for (int j = 0; j < R; ++j) p[j][0] += dot8(row[size_t(j) * nvec + v], x0);
      }
      float acc[R];
#pragma unroll
      for (int j = 0; j < R; ++j) acc[j] = (p[j][0] + p[j][1]) + (p[j][2] + p[j][3]);
#pragma unroll
      for (int o = 16; o > 0; o >>= 1)
#pragma unroll
        for (int j = 0; j < R; ++j) acc[j] += __shfl_xor_sync(dev::kFull, acc[j], o);
      if (lane == 0) ep.store(u, 0, acc, prior);
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(empty + slot);
  }
}

constexpr size_t kSmemLimit = 220 * 1024;  // under Hopper's 227 KB per block, static shared memory included
inline size_t device_smem_limit() {
  static const size_t limit = [] {
    int dev = 0, optin = 0;
    check_cuda(cudaGetDevice(&dev), "streamed gemv: reading the device");
    check_cuda(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
               "streamed gemv: reading the shared memory per block");
    return std::min(kSmemLimit, size_t(std::max(0, optin - 1024)));
  }();
  return limit;
}
// Launches the streamed product if the shape fits (returns false otherwise, launching nothing). stage_target,
// smem_budget and blocks_per_sm as for plan(); smem_budget is cut to what a block of this device may opt into
// (device_smem_limit()). With one block per SM each asks for at least min_smem bytes (kMinSmem: two never
// share an SM). early_bytes: what the producer loads before the consumers have x (0: no limit; kEarlyBytes:
// more queued ahead of x's loads delays them, and with them the whole product).
template <bool kNorm, class Epi>
bool launch(const uint16_t* W, int in, const void* x, const uint16_t* nw, float eps, const Epi& epi, int sms,
            int stage_target, size_t smem_budget, int blocks_per_sm, size_t min_smem, int early_bytes,
            cudaStream_t s) {
  const size_t limit = device_smem_limit();
  Plan p = plan(epi.units(), Epi::kRows, in, sms, stage_target, std::min(smem_budget, limit), blocks_per_sm);
  if (!p.ok()) return false;
  // One block per SM: a small product's blocks (a few stages each) would otherwise pair up on half the SMs
  // and leave the other half's share of the bandwidth unused (docs/BENCHMARKS.md, ninth part).
  if (blocks_per_sm <= 1) p.smem = std::max(p.smem, std::min(min_smem, std::min(smem_budget, limit)));
  if (early_bytes > 0) p.early_stages = std::max(1, (early_bytes + p.stage_bytes - 1) / p.stage_bytes);
  auto kernel = gemv_streamed_kernel<kNorm, Epi>;
  static const bool configured = [&] {  // once per instantiation: more than 48 KB, shared memory first
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(limit)),
               "streamed gemv: shared memory size");
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                    int(cudaSharedmemCarveoutMaxShared)),
               "streamed gemv: carveout");
    return true;
  }();
  (void)configured;
  dev::launch_pdl(kernel, p.blocks, kThreads, p.smem, s, "streamed gemv kernel", W, in, x, nw, eps, epi, p);
  return true;
}

}  // namespace streamed
}  // namespace cw::kern::cuda
