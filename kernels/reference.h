// CPU references of every kernel in kernels/: fp32, loop by loop, with the same layouts and parameters as
// the CUDA launchers in kernels/cuda.h. The engine's CPU backend (serve/) is built from these, and the GPU
// test binary checks each kernel against them.
// Must not: depend on CUDA or LibTorch, or take shortcuts that change results (they define the answer).
#pragma once
#include <cstdint>

#include "kernels/common/common.h"

namespace cw::kern::ref {

// x[t] = table[tokens[t]]; table [vocab][d].
void embedding(const float* table, const int32_t* tokens, int T, int d, float* x);
// y[r] = w * x[m(r)] / rms(x[m(r)]); m(r) = row_map ? row_map[r] : r.
void rmsnorm(const float* x, const int32_t* row_map, int rows, int d, const float* w, float eps, float* y);
// qkv [T][(H + 2*Hkv) * hd] (q, then k, then v heads). Rotates q in place (rotate-half RoPE at pos[t]) and
// writes rotated k and v to the caches at slot[t].
void rope_append(float* qkv, const int32_t* pos, const int32_t* slot, int T, int H, int Hkv, int hd, float theta,
                 float* k_cache, float* v_cache);
// out[t][i] = silu(gate_up[t][i]) * gate_up[t][ff + i].
void swiglu(const float* gate_up, int T, int ff, float* out);
// See AttnLevel in kernels/common/common.h. Query rows live in q with stride shape.q_stride.
void paged_attention(const float* q, const int32_t* q_pos, const AttnLevel& level, const AttnShape& shape,
                     const float* k_cache, const float* v_cache, int splits, int slot0, float* o_part,
                     float* lse_part);
// Log-sum-exp merge of `slots` partial states per (row, head): o [rows][H*hd], lse [rows][H] (nullable).
void merge_states(const float* o_part, const float* lse_part, int slots, int rows, int H, int hd, float* o,
                  float* lse);
// y[T][out] = beta * y + x[T][in] W[out][in]^T, accumulated in double, spread over threads.
void matmul(const float* x, int T, int in, const float* W, int out, float beta, float* y);
// One token per row; see SampleParams.
void sample(const float* logits, int rows, int V, const SampleParams* params, int32_t* out);

}  // namespace cw::kern::ref
