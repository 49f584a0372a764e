// Launchers of the CUDA kernels in kernels/ (device pointers, one stream). bf16 tensors are uint16_t bits;
// activations between matrix products are fp32, inputs to matrix products bf16. Each launcher's CPU twin
// is the function of the same name in kernels/reference.h.
// Must not: allocate, synchronise, or be called with host pointers (the launches are captured in CUDA graphs).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "kernels/common/common.h"

namespace cw::kern::cuda {

void check_cuda(cudaError_t e, const char* what);  // throws cw::UserError naming WHAT and the CUDA error

void embedding(const uint16_t* table, const int32_t* tokens, int T, int d, float* x, cudaStream_t s);
void rmsnorm(const float* x, const int32_t* row_map, int rows, int d, const uint16_t* w, float eps, uint16_t* y,
             cudaStream_t s);
void rope_append(float* qkv, const int32_t* pos, const int32_t* slot, int T, int H, int Hkv, int hd, float theta,
                 uint16_t* k_cache, uint16_t* v_cache, cudaStream_t s);
void swiglu(const float* gate_up, int T, int ff, uint16_t* out, cudaStream_t s);
// Work list of an attention launch: block b handles rows [tile_row0[b], +rows_per_tile) of item tile_item[b].
// rows_per_tile is 1 when every item has one row (decode) and attention_rows_per_tile() otherwise.
void attention_tiles(const std::vector<int32_t>& q_indptr, int rows_per_tile, std::vector<int32_t>& tile_item,
                     std::vector<int32_t>& tile_row0);
// Optional fused merge: the last block of each (tile, KV head) combines all `slots` partial states of its rows
// into out (bf16 [rows][H*hd]); counters (tiles * kv_heads ints, zero) count finished splits and end at zero.
// Valid when every slot of this launch's rows is written by this launch or an earlier one (launches that
// share a level each merge their own rows, with their own counters). paged_attention_mma with slots == 1
// writes out directly (no partial state, counters untouched).
struct AttnMerge {
  int slots = 0;
  uint16_t* out = nullptr;
  int32_t* counters = nullptr;
};
void paged_attention(const float* q, const int32_t* q_pos, const AttnLevel& level, const int32_t* tile_item,
                     const int32_t* tile_row0, int num_tiles, int rows_per_tile, const AttnShape& shape,
                     const uint16_t* k_cache, const uint16_t* v_cache, int splits, int slot0, float* o_part,
                     float* lse_part, const AttnMerge& merge, cudaStream_t s, bool earlier_keys_ready = false);
// earlier_keys_ready: every key before an item's first query row of this launch was written before the
// previous kernel (decode steps: only each row's own key is new), so those are read before waiting for it.
// The same work list and partial states on tensor cores (paged_attention_mma.cu), bf16 products with fp32
// accumulation. query_warps (1, 2 or 4) of the block's four warps take 16 query rows each, the others split
// the keys: rows_per_tile * group <= 16 * query_warps (1: decode rows; 2, 4: prefill chunks). Built for head
// dimensions 64 and 128 and groups up to 16.
bool attention_mma_supported(const AttnShape& shape);
int attention_mma_rows_per_tile(int heads, int kv_heads, int query_warps);  // the most rows a tile can hold
void paged_attention_mma(const float* q, const int32_t* q_pos, const AttnLevel& level, const int32_t* tile_item,
                         const int32_t* tile_row0, int num_tiles, int rows_per_tile, int query_warps, const AttnShape& shape,
                         const uint16_t* k_cache, const uint16_t* v_cache, int splits, int slot0, float* o_part,
                         float* lse_part, const AttnMerge& merge, cudaStream_t s);
// Decode rows (one row per tile, one level) as paged_attention_mma with one query warp, but q and k taken
// unrotated from the qkv rows (shape.q_stride covers q, k and v): RoPE at theta and the KV append of each
// row's own position happen inside, so rope_append is not launched. Outputs and cache equal the separate
// kernels'.
void paged_attention_mma_decode_rope(const float* qkv, const int32_t* q_pos, const AttnLevel& level,
                                     const int32_t* tile_item, const int32_t* tile_row0, int num_tiles,
                                     const AttnShape& shape, uint16_t* k_cache, uint16_t* v_cache, int splits,
                                     float* o_part, float* lse_part, const AttnMerge& merge, float rope_theta,
                                     cudaStream_t s);
// The rope phase of an attention launch: RoPE at theta and the KV append of every row of the step, done inside
// the launch instead of by rope_append. slot: each row's cache slot (as rope_append's); sync: three int32
// counters, zero before the first launch and left at zero by each.
struct AttnRopePhase {
  const int32_t* slot = nullptr;
  int32_t* sync = nullptr;
  float theta = 0.f;
};
// Narrow tiles of one level (rows_per_tile as paged_attention_mma with one query warp) whose items' rows are
// their last keys, each cached at slot[row] where the item's page list puts that key: decode rows beside short
// chunks. q, k and v come unrotated from the qkv rows. Every row's k and v are rotated and cached once inside
// (in (row, KV head) units the blocks claim), every tile rotates its q rows as it loads them, and a block waits
// for the units only before it copies a tile holding one of this step's keys; rope_append is not launched.
// Outputs and caches equal rope_append + paged_attention_mma's.
void paged_attention_mma_rope_phase(const float* qkv, const int32_t* q_pos, const AttnLevel& level,
                                    const int32_t* tile_item, const int32_t* tile_row0, int num_tiles, int rows_per_tile,
                                    const AttnShape& shape, uint16_t* k_cache, uint16_t* v_cache, int splits,
                                    float* o_part, float* lse_part, const AttnMerge& merge, const AttnRopePhase& phase,
                                    cudaStream_t s);
// One level in one launch: tiles [0, narrow_tiles) narrow (one query warp) split `splits` times over the
// keys, then wide_tiles chunk tiles of attention_mma_rows_per_tile(.., wide_query_warps) rows (2 or 4 query
// warps) split `wide_splits` times; each tile merged into merge.out by its last block (written directly when
// its kind has one split). For a single attention level (merge.slots >= either kind's splits); counters for
// every tile when a kind has more than one split.
void paged_attention_mma_mixed(const float* q, const int32_t* q_pos, const AttnLevel& level, const int32_t* tile_item,
                               const int32_t* tile_row0, int narrow_tiles, int narrow_rpt, int wide_tiles,
                               int wide_query_warps, const AttnShape& shape, const uint16_t* k_cache,
                               const uint16_t* v_cache, int splits, int wide_splits, float* o_part, float* lse_part,
                               const AttnMerge& merge, cudaStream_t s, const AttnRopePhase* phase = nullptr);
// With phase: q, k and v unrotated in the qkv rows and the rope phase inside, as paged_attention_mma_rope_phase
// (every item's rows its last keys; outputs and caches equal rope_append + this launch without it).
// One item with many query rows (rows row_begin.. of the launch, its page list PAGES on the device) on tensor
// cores: the same partial state as paged_attention, into slot0, and -inf into slots slot0+1..slot0+splits-1.
size_t paged_prefill_workspace(int rows, int kv_len, const AttnShape& shape);
void paged_prefill(cublasHandle_t handle, const float* q, const int32_t* q_pos, int row_begin, int rows,
                   const int32_t* pages, int kv_len, int kv_pos0, const AttnShape& shape, const uint16_t* k_cache,
                   const uint16_t* v_cache, int splits, int slot0, float* o_part, float* lse_part, void* workspace,
                   cudaStream_t s);
// o_bf16 [rows][H*hd] (nullable), o_f32 (nullable), lse [rows][H] (nullable).
void merge_states(const float* o_part, const float* lse_part, int slots, int rows, int H, int hd, uint16_t* o_bf16,
                  float* o_f32, float* lse, cudaStream_t s);
// One-row products (T = 1) stream their weights through shared memory ahead of the computation where the shape
// fits (kernels/gemv/gemv_streamed.cuh), else use the register kernel as T = 2..4 do. On unless switched off
// here or by CHUNKWISE_GEMV_STREAMED=0; process-wide.
void set_gemv_streamed(bool on);
bool gemv_streamed();
// Streamed launches so far in this process (tests check that a shape went where they expect).
int64_t gemv_streamed_launches();
// Its shared memory per block (ring and x) and stage size in KB, and blocks per SM; 0 = the default (200, 32,
// 1; the environment's CHUNKWISE_GEMV_STREAM_SMEM_KB / _STAGE_KB / _BLOCKS_PER_SM when never set). Shapes
// that do not fit use the register kernel.
void set_gemv_stream_sizes(int smem_kb, int stage_kb, int blocks_per_sm = 0);
// Its smallest shared memory per block (one block per SM: 116, so that two never share an SM) and how many KB
// its producer loads before the consumers have x (64); 0 = the default (the environment's
// CHUNKWISE_GEMV_STREAM_MIN_SMEM_KB / _EARLY_KB when never set). early_kb 100000: no limit.
void set_gemv_stream_start(int min_smem_kb, int early_kb);
// y[T][out] = beta * y + x[T][in] W^T for T in 1..4 (bandwidth-bound decode); in must be a multiple of 8.
void gemv(const uint16_t* W, int out, int in, const uint16_t* x, int T, float beta, float* y, cudaStream_t s);
// The same product for 1 to 64 rows of x on tensor cores (gemm_skinny.cu): split K with atomics, so the
// summation order varies between runs; beta 0 or 1.
void gemm_skinny(const uint16_t* W, int out, int in, const uint16_t* x, int T, float beta, float* y, cudaStream_t s);
// The same product on CUTLASS's Hopper kernels (gemm_cutlass.cu), configurations 0 .. gemm_cutlass_configs() - 1
// (a tile shape and a persistent or stream-K scheduler each; none where the build found no CUTLASS headers),
// launched with programmatic dependent launch. gemm_cutlass_workspace: the bytes of workspace a configuration
// needs for this shape, -1 where it cannot run it (out % 4, in % 8). gemm_cutlass: false, with nothing
// launched, where it cannot run it or the workspace is too small. Capturable in a CUDA graph.
int gemm_cutlass_configs();
const char* gemm_cutlass_name(int config);
int64_t gemm_cutlass_workspace(int config, int T, int out, int in);
bool gemm_cutlass(int config, const uint16_t* W, int out, int in, const uint16_t* x, int T, float beta, float* y,
                  void* workspace, size_t workspace_bytes, cudaStream_t s);
// The same product with its input built by each block: RMSNorm(x) * norm_w (x fp32 [T][in]), or
// silu(gate) * up from gate_up fp32 [T][2*in]; equal to rmsnorm / swiglu followed by gemv.
void gemv_rmsnorm(const uint16_t* W, int out, int in, const float* x, const uint16_t* norm_w, float eps, int T,
                  float beta, float* y, cudaStream_t s);
void gemv_swiglu(const uint16_t* W, int out, int in, const float* gate_up, int T, float beta, float* y, cudaStream_t s);
// Decode's products with the next elementwise step in their epilogue (one warp computes the two rows it needs):
// qkv = RMSNorm(x) * norm_w times W, the fused [q; k; v] weight of (H + 2 Hkv) * hd rows, then q rotated into
// qkv (fp32 [T][(H + 2 Hkv) * hd]; its k and v columns are not written) and k, v appended to the caches at
// slot[t]: equal to gemv_rmsnorm then rope_append.
void gemv_rmsnorm_rope_append(const uint16_t* W, int in, const float* x, const uint16_t* norm_w, float eps, int T,
                              const int32_t* pos, const int32_t* slot, int H, int Hkv, int hd, float theta, float* qkv,
                              uint16_t* k_cache, uint16_t* v_cache, cudaStream_t s);
// h (bf16 [T][ff]) = silu(gate) * up of RMSNorm(x) * norm_w times W, the [gate; up] weight of 2 ff rows: equal
// to gemv_rmsnorm then swiglu.
void gemv_rmsnorm_swiglu(const uint16_t* W, int ff, int in, const float* x, const uint16_t* norm_w, float eps, int T,
                         uint16_t* h, cudaStream_t s);
void sample(const float* logits, int rows, int V, const SampleParams* params, int32_t* out, cudaStream_t s);

}  // namespace cw::kern::cuda
