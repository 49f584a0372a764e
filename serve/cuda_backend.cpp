// Implementation of serve/cuda_backend.h. One step: fill the metadata arrays on the host (pinned), copy them
// into fixed device buffers, then run the layer loop (or replay its CUDA graph), then copy the sampled tokens
// back. Fixed buffer addresses are what make graph replay valid for any plan of the captured size.
#include "serve/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>
#include <string>

#include "common/env.h"
#include "common/error.h"
#include "kernels/cuda.h"
#include "serve/tuned_gemm.h"

namespace cw::serve {

using kern::cuda::check_cuda;

static void check_blas(cublasStatus_t s, const char* what) {
  check(s == CUBLAS_STATUS_SUCCESS, what, ": cuBLAS status ", int(s));
}

template <typename T>
static T* device_alloc(size_t n, const char* what) {
  void* p = nullptr;
  check_cuda(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)), what);
  return static_cast<T*>(p);
}

static std::vector<uint16_t> to_bf16(std::initializer_list<const Weight*> parts) {
  size_t n = 0;
  for (auto* w : parts) n += w->data.size();
  std::vector<uint16_t> out;
  out.reserve(n);
  for (auto* w : parts)
    for (float f : w->data) out.push_back(kern::float_to_bf16(f));
  return out;
}

struct CudaBackend::Impl {
  struct Layer {
    uint16_t *ln1, *ln2, *qkv, *o, *gate_up, *down, *k, *v;
  };
  // Offsets (in int32) of the metadata arrays inside one device buffer and its pinned host mirror.
  struct LevelMeta {
    size_t q_indptr, kv_indptr, kv_len, kv_pos0, tile_item, tile_row0, kv_pages;
  };

  ModelConfig c;
  CudaBackendOptions opt;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  void* blas_ws = nullptr;
  std::unique_ptr<TunedGemm> gemm;  // products of more than four rows, algorithm chosen per shape by timing
  int sms = 0;
  std::string device;
  double weight_bytes = 0;
  std::vector<void*> allocations;
  uint16_t *embed = nullptr, *norm = nullptr, *lm_head = nullptr;
  std::vector<Layer> layers;
  float *x = nullptr, *qkv = nullptr, *gu = nullptr, *o_part = nullptr, *lse_part = nullptr, *logits = nullptr;
  uint16_t *xn = nullptr, *att = nullptr, *h = nullptr;
  int32_t *d_meta = nullptr, *h_meta = nullptr, *d_out = nullptr, *h_out = nullptr;
  kern::SampleParams *d_params = nullptr, *h_params = nullptr;
  size_t m_tokens = 0, m_pos = 0, m_slots = 0, m_sample = 0, small_end = 0, meta_total = 0, max_pages_listed = 0;
  LevelMeta lv[2];
  // Captured steps by launch shape: decode-only steps padded to a power of two ({-1, B}), and (with
  // graph_mixed_steps) any other step without cuBLAS attention items by every host value its launches take
  // (staged_key; single-level steps without chunk tiles are padded to few shapes), captured the second time
  // that shape is seen. Replays read the new step's metadata from the same device buffers.
  std::map<std::vector<int>, cudaGraphExec_t> graphs;
  std::map<std::vector<int>, int> shapes_seen;
  static constexpr size_t kMaxGraphs = 256;
  struct Staged {
    bool graph = false;   // a padded decode-only step (B rows)
    bool replay = false;  // run from a captured graph (decode-only, or a mixed step whose shape repeats)
    // The launches run B rows and Rp sample rows: T and R, or more where the step is padded to a graph's shape.
    int B = 0, Rp = 0, T = 0, R = 0, levels = 1, items[2] = {0, 0}, tiles[2] = {0, 0}, splits[2] = {1, 1}, rpt[2] = {1, 1};
    int wide_tiles[2] = {0, 0};  // tensor-core attention: chunk tiles, listed after the level's narrow tiles
    int wide_splits = 1;         // the one-level mixed launch: the chunk tiles' split-KV count
    int wide_qw = 4;             // warps over the query rows of a chunk tile (2 or 4)
    bool fused_merge = false;    // no cuBLAS items: the last level's attention launches merge their rows
    bool decode = false;         // one row per item, every row sampled, one level (StepPlan::decode_only)
    bool last_keys = false;      // one level, each item's rows its last keys in order, cached where its pages put
                                 // them: the rope phase may run inside the attention launch
  };
  Staged stage(const StepPlan& plan, bool allow_graph);  // fills and copies the step's metadata
  static std::vector<int> staged_key(const Staged& st);   // every host value launch_all reads from st
  void execute(const Staged& st);                        // the graph replay or the launches
  // Attention on tensor cores (paged_attention_mma.cu) where the shape is built, unless CHUNKWISE_ATTENTION_SIMT
  // is set: decode rows in narrow tiles, chunks of at least wide_rows rows in chunk tiles. Otherwise the CUDA-core
  // kernel, with items of many query rows on the cuBLAS path (paged_prefill.cu).
  bool mma = false;
  int chunk_rpt(int qw) const {  // rows of a chunk tile of qw warps over 16 (token, head) rows each
    return kern::cuda::attention_mma_rows_per_tile(int(c.n_heads), int(c.n_kv_heads), qw);
  }
  // The attention launch heuristics; each can be overridden from the environment for measurements (bench
  // serve sweeps, docs/BENCHMARKS.md) and defaults to the value those measurements chose.
  // Up to this many narrow tiles the CUDA-core kernel runs them (CHUNKWISE_ATTN_SIMT_TILES).
  const int simt_tiles = env_int("CHUNKWISE_ATTN_SIMT_TILES", 4);
  // Chunks of fewer rows go to narrow tiles too: more blocks for a short chunk beside decodes (a wide tile
  // holds 64 query rows, and a 96-row chunk would give only 12 tiles per KV head) (CHUNKWISE_ATTN_WIDE_ROWS).
  const int wide_rows = env_int("CHUNKWISE_ATTN_WIDE_ROWS", 256);
  // Warps over the query rows of chunk tiles: 4 when the step's longest chunk has at least qw4_rows rows, else
  // 2 (CHUNKWISE_ATTN_QW4_ROWS); CHUNKWISE_ATTN_WIDE_QW=2 or 4 fixes it.
  const int qw4_rows = env_int("CHUNKWISE_ATTN_QW4_ROWS", 256);
  const int fixed_qw = env_int("CHUNKWISE_ATTN_WIDE_QW", 0);
  // Split-KV of the chunk tiles in the one-level mixed launch (CHUNKWISE_ATTN_CHUNK_SPLITS): unset = as often as
  // the decode tiles beside them; `auto` = as often as gives their blocks no more keys than the decode tiles'
  // blocks (quicker steps, but the count moves with the chunk's context, so mixed steps repeat their launch
  // shape less and more of them are captured as graphs while serving); N = N times.
  const int chunk_splits = [] {
    const char* v = std::getenv("CHUNKWISE_ATTN_CHUNK_SPLITS");
    return !v || !*v ? 0 : std::string(v) == "auto" ? -1 : std::max(1, std::atoi(v));
  }();
  // Split-KV targets this many blocks per SM: narrow tiles on tensor cores, others (CHUNKWISE_ATTN_WAVES_NARROW,
  // CHUNKWISE_ATTN_WAVES_OTHER).
  const int waves_narrow = std::max(1, env_int("CHUNKWISE_ATTN_WAVES_NARROW", 3));
  // Decode-only steps (one row per item, one level) on tensor cores: this many blocks per SM
  // (CHUNKWISE_ATTN_WAVES_DECODE); batch 64 gets one split per (sequence, KV head) and no merge.
  const int waves_decode = std::max(1, env_int("CHUNKWISE_ATTN_WAVES_DECODE", 1));
  const int waves_other = std::max(1, env_int("CHUNKWISE_ATTN_WAVES_OTHER", 8));
  // Products of 5 to 64 rows: cuBLAS, or our tensor-core kernel (gemm_skinny.cu) when CHUNKWISE_GEMM_SKINNY is
  // set. On an H200 it is faster at 8-16 rows and slower at 32-64 (docs/BENCHMARKS.md), and its split-K atomics
  // add in no fixed order, so it stays opt-in: greedy tokens must not change between runs.
  bool skinny = std::getenv("CHUNKWISE_GEMM_SKINNY") != nullptr;
  bool unfused_decode = std::getenv("CHUNKWISE_DECODE_UNFUSED") != nullptr;
  // Decode steps of more rows than the one-row products take (T > 4) on tensor cores: RoPE and the KV append
  // inside the attention launch instead of rope_append (CHUNKWISE_DECODE_ROPE_IN_ATTN=0 keeps the separate one).
  bool rope_in_attn_on = env_int("CHUNKWISE_DECODE_ROPE_IN_ATTN", 1) == 1;
  // Other single-level steps on narrow tensor-core tiles (decodes beside chunks shorter than wide_rows): the
  // rope phase inside the attention launch, which rotates and caches every row's k and v once
  // (paged_attention_mma_rope_phase) instead of rope_append (CHUNKWISE_CHUNK_ROPE_IN_ATTN=0 keeps rope_append).
  bool rope_phase_on = env_int("CHUNKWISE_CHUNK_ROPE_IN_ATTN", 1) == 1;
  int64_t rope_in_attn_steps = 0;
  // Decode steps on the CUDA-core attention kernel read the keys of earlier steps before waiting for the qkv
  // product (CHUNKWISE_ATTN_PREWAIT=0: after, as other steps).
  bool prewait_keys = env_int("CHUNKWISE_ATTN_PREWAIT", 1) == 1;
  struct DenseItem {
    int row_begin, rows, kv_len, kv_pos0;
    size_t pages_off;
  };
  std::vector<DenseItem> dense[2];
  void* prefill_ws = nullptr;
  int32_t* merge_counters = nullptr;  // fused merge: finished splits per (tile, KV head)
  int32_t* rope_sync = nullptr;       // the rope phase's three counters (left at zero by each launch)
  int prefill_row_block = 0;
  std::vector<std::pair<const char*, cudaEvent_t>>* marks = nullptr;  // set while profiling
  void mark(const char* what) {
    if (!marks) return;
    cudaEvent_t e;
    cudaEventCreate(&e);
    cudaEventRecord(e, stream);
    marks->push_back({what, e});
  }

  template <typename T>
  T* alloc(size_t n, const char* what) {
    T* p = device_alloc<T>(n, what);
    allocations.push_back(p);
    return p;
  }
  uint16_t* upload(const std::vector<uint16_t>& v) {
    uint16_t* p = alloc<uint16_t>(v.size(), "uploading weights");
    check_cuda(cudaMemcpy(p, v.data(), v.size() * 2, cudaMemcpyHostToDevice), "uploading weights");
    weight_bytes += double(v.size()) * 2;
    return p;
  }

  void linear(const uint16_t* xin, int T, const uint16_t* W, int out, int in, float beta, float* y) {
    if (T == 0) return;
    if (T <= 4) return kern::cuda::gemv(W, out, in, xin, T, beta, y, stream);
    if (T <= 64 && skinny) return kern::cuda::gemm_skinny(W, out, in, xin, T, beta, y, stream);
    gemm->run(T, out, in, W, xin, beta, y);
  }
  // Times the products at every power-of-two row count from 8 to max_tokens (the padded decode batches; other
  // counts use the next tuned one), on the real weights and constant inputs, unless CHUNKWISE_GEMM_UNTUNED.
  void tune_products();

  kern::AttnLevel level_view(int li, int items) const {
    kern::AttnLevel L;
    L.num_items = items;
    L.q_indptr = d_meta + lv[li].q_indptr, L.kv_indptr = d_meta + lv[li].kv_indptr;
    L.kv_pages = d_meta + lv[li].kv_pages, L.kv_len = d_meta + lv[li].kv_len, L.kv_pos0 = d_meta + lv[li].kv_pos0;
    return L;
  }

  // The whole forward for the staged rows and sample rows (padding included), reading metadata from d_meta.
  void launch_all(const Staged& st) {
    const int T = st.B, R = st.Rp, levels = st.levels;
    const int *items = st.items, *tiles = st.tiles, *splits = st.splits;
    const int d = int(c.d_model), H = int(c.n_heads), Hkv = int(c.n_kv_heads), hd = int(c.head_dim());
    const int ff = int(c.d_ff), V = int(c.vocab_size), nqkv = (H + 2 * Hkv) * hd;
    const float eps = float(c.norm_eps);
    kern::AttnShape shape;
    shape.rows = T, shape.heads = H, shape.kv_heads = Hkv, shape.head_dim = hd, shape.page_size = opt.page_size;
    shape.q_stride = nqkv, shape.scale = float(1.0 / std::sqrt(double(hd)));
    const int32_t* pos = d_meta + m_pos;
    int slots = 0;
    for (int li = 0; li < levels; ++li) slots += splits[li];
    if (levels == 1) slots = std::max(slots, st.wide_splits);  // the mixed launch's chunk tiles
    mark("start");
    kern::cuda::embedding(embed, d_meta + m_tokens, T, d, x, stream);
    mark("embedding");
    // Decode: the norms run inside the matrix-vector products, RoPE with the KV append and SwiGLU in their
    // epilogues. (SwiGLU inside the down product instead was slower on an H200: every block recomputes 5,632
    // activations; see docs/BENCHMARKS.md.) CHUNKWISE_DECODE_UNFUSED keeps the separate kernels, to compare.
    const bool fuse = T <= 4, fuse_epilogues = fuse && !unfused_decode;
    const float theta = float(c.rope_theta);
    const bool rope_in_attn = rope_in_attn_on && mma && st.decode && levels == 1 && !fuse && tiles[0] > simt_tiles &&
                              st.wide_tiles[0] == 0 && dense[0].empty() && st.rpt[0] == 1;
    // The rope phase in narrow-tile launches, and in mixed launches whose chunk tiles are medium (chunks under
    // qw4_rows rows; longer prefills keep rope_append).
    const bool rope_phase = rope_phase_on && mma && !st.decode && st.last_keys && levels == 1 && !fuse &&
                            dense[0].empty() &&
                            (st.wide_tiles[0] == 0 ? tiles[0] > simt_tiles : st.wide_qw == 2);
    kern::cuda::AttnRopePhase phase;
    phase.slot = d_meta + m_slots, phase.sync = rope_sync, phase.theta = theta;
    rope_in_attn_steps += rope_in_attn || rope_phase;
    for (auto& L : layers) {
      if (fuse_epilogues) {
        kern::cuda::gemv_rmsnorm_rope_append(L.qkv, d, x, L.ln1, eps, T, pos, d_meta + m_slots, H, Hkv, hd, theta,
                                             qkv, L.k, L.v, stream);
        mark("qkv product + rope + KV append");
      } else {
        if (fuse) {
          kern::cuda::gemv_rmsnorm(L.qkv, nqkv, d, x, L.ln1, eps, T, 0, qkv, stream);
        } else {
          kern::cuda::rmsnorm(x, nullptr, T, d, L.ln1, eps, xn, stream);
          mark("rmsnorm");
          linear(xn, T, L.qkv, nqkv, d, 0, qkv);
        }
        mark("qkv product");
        if (!rope_in_attn && !rope_phase) {
          kern::cuda::rope_append(qkv, pos, d_meta + m_slots, T, H, Hkv, hd, theta, L.k, L.v, stream);
          mark("rope + KV append");
        }
      }
      int slot0 = 0;
      for (int li = 0; li < levels; ++li) {
        kern::cuda::AttnMerge merge;
        if (st.fused_merge && li == levels - 1) merge.slots = slots, merge.out = att, merge.counters = merge_counters;
        if (mma && levels == 1 && st.wide_tiles[0] > 0) {  // decode and chunk tiles together, merged inside
          kern::cuda::paged_attention_mma_mixed(qkv, pos, level_view(0, items[0]), d_meta + lv[0].tile_item,
                                                d_meta + lv[0].tile_row0, tiles[0], st.rpt[0], st.wide_tiles[0], st.wide_qw,
                                                shape, L.k, L.v, splits[0], st.wide_splits, o_part, lse_part, merge,
                                                stream, rope_phase ? &phase : nullptr);
        } else if (mma) {
          const int32_t *ti = d_meta + lv[li].tile_item, *tr = d_meta + lv[li].tile_row0;
          if (tiles[li] <= simt_tiles)  // a handful of decode rows: latency-bound, the CUDA-core kernel is quicker
            kern::cuda::paged_attention(qkv, pos, level_view(li, items[li]), ti, tr, tiles[li], st.rpt[li], shape, L.k,
                                        L.v, splits[li], slot0, o_part, lse_part, merge, stream, st.decode && prewait_keys);
          else if (rope_phase)
            kern::cuda::paged_attention_mma_rope_phase(qkv, pos, level_view(li, items[li]), ti, tr, tiles[li], st.rpt[li],
                                                       shape, L.k, L.v, splits[li], o_part, lse_part, merge, phase,
                                                       stream);
          else if (rope_in_attn)
            kern::cuda::paged_attention_mma_decode_rope(qkv, pos, level_view(li, items[li]), ti, tr, tiles[li], shape,
                                                        L.k, L.v, splits[li], o_part, lse_part, merge, theta, stream);
          else
            kern::cuda::paged_attention_mma(qkv, pos, level_view(li, items[li]), ti, tr, tiles[li], st.rpt[li], 1,
                                            shape, L.k, L.v, splits[li], slot0, o_part, lse_part, merge, stream);
          kern::cuda::AttnMerge wide_merge = merge;  // its own counters, after the narrow tiles'
          if (wide_merge.counters) wide_merge.counters += size_t(tiles[li]) * size_t(Hkv);
          kern::cuda::paged_attention_mma(qkv, pos, level_view(li, items[li]), ti + tiles[li], tr + tiles[li],
                                          st.wide_tiles[li], chunk_rpt(st.wide_qw), st.wide_qw, shape, L.k, L.v, splits[li], slot0,
                                          o_part, lse_part, wide_merge, stream);
        } else {
          kern::cuda::paged_attention(qkv, pos, level_view(li, items[li]), d_meta + lv[li].tile_item,
                                      d_meta + lv[li].tile_row0, tiles[li], st.rpt[li], shape, L.k, L.v, splits[li],
                                      slot0, o_part, lse_part, merge, stream);
        }
        for (const DenseItem& it : dense[li])
          for (int r0 = 0; r0 < it.rows; r0 += prefill_row_block)
            kern::cuda::paged_prefill(blas, qkv, pos, it.row_begin + r0, std::min(prefill_row_block, it.rows - r0),
                                      d_meta + lv[li].kv_pages + it.pages_off, it.kv_len, it.kv_pos0, shape, L.k, L.v,
                                      splits[li], slot0, o_part, lse_part, prefill_ws, stream);
        slot0 += splits[li];
      }
      mark("attention");
      if (!st.fused_merge) {
        kern::cuda::merge_states(o_part, lse_part, slots, T, H, hd, att, nullptr, nullptr, stream);
        mark("merge states");
      }
      linear(att, T, L.o, d, H * hd, 1, x);
      mark("o product");
      if (fuse_epilogues) {
        kern::cuda::gemv_rmsnorm_swiglu(L.gate_up, ff, d, x, L.ln2, eps, T, h, stream);
        mark("gate/up product + swiglu");
      } else {
        if (fuse) {
          kern::cuda::gemv_rmsnorm(L.gate_up, 2 * ff, d, x, L.ln2, eps, T, 0, gu, stream);
        } else {
          kern::cuda::rmsnorm(x, nullptr, T, d, L.ln2, eps, xn, stream);
          mark("rmsnorm");
          linear(xn, T, L.gate_up, 2 * ff, d, 0, gu);
        }
        mark("gate/up product");
        kern::cuda::swiglu(gu, T, ff, h, stream);
        mark("swiglu");
      }
      linear(h, T, L.down, d, ff, 1, x);
      mark("down product");
    }
    kern::cuda::rmsnorm(x, d_meta + m_sample, R, d, norm, eps, xn, stream);
    linear(xn, R, lm_head, V, d, 0, logits);
    mark("lm head");
    kern::cuda::sample(logits, R, V, d_params, d_out, stream);
    mark("sampling");
  }


  int splits_for(int blocks, int max_kv, bool wide, bool decode = false) const {
    // Narrow tiles on tensor cores: about one wave (3-5 blocks per SM stay resident; fewer splits, fewer
    // merges), decode-only steps fewer still. Chunk tiles carry 4 times the rows, and the CUDA-core kernel is
    // small: several waves.
    const int per_sm = mma && !wide ? (decode ? waves_decode : waves_narrow) : waves_other;
    int s = std::max(1, (per_sm * sms + blocks - 1) / std::max(1, blocks));
    if (max_kv >= 0) s = std::min(s, std::max(1, (max_kv + 63) / 64));
    return std::min(s, opt.max_splits);
  }
};

CudaBackend::CudaBackend(const Bundle& b, CudaBackendOptions opt) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.c = b.config, m.opt = opt;
  const ModelConfig& c = m.c;
  int count = 0;
  check(cudaGetDeviceCount(&count) == cudaSuccess && count > 0, "--device cuda: no CUDA device is visible");
  cudaDeviceProp prop{};
  check_cuda(cudaGetDeviceProperties(&prop, 0), "reading the device properties");
  m.sms = prop.multiProcessorCount;
  m.device = prop.name;
  check(opt.page_size >= 1 && opt.max_tokens >= 1 && opt.max_sample_rows >= 1 && opt.max_splits >= 1,
        "cuda backend: page size, max tokens, sample rows and splits must be positive");
  check(c.d_model % 8 == 0 && c.d_ff % 8 == 0, "cuda backend: d_model and d_ff must be multiples of 8");
  check_cuda(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking), "creating a stream");
  check_blas(cublasCreate(&m.blas), "creating the cuBLAS handle");
  check_blas(cublasSetStream(m.blas, m.stream), "cuBLAS stream");
  const size_t ws = size_t(32) << 20;
  m.blas_ws = m.alloc<char>(ws, "cuBLAS workspace");
  check_blas(cublasSetWorkspace(m.blas, m.blas_ws, ws), "cuBLAS workspace");

  m.embed = m.upload(to_bf16({&b.at("model.embed_tokens.weight")}));
  m.norm = m.upload(to_bf16({&b.at("model.norm.weight")}));
  m.lm_head = c.tie_embeddings ? m.embed : m.upload(to_bf16({&b.at("lm_head.weight")}));
  m.weight_bytes -= double(c.vocab_size * c.d_model) * 2;  // the embedding is gathered, not streamed
  if (c.tie_embeddings) m.weight_bytes += double(c.vocab_size * c.d_model) * 2;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Impl::Layer L{};
    L.ln1 = m.upload(to_bf16({&b.at(p + "input_layernorm.weight")}));
    L.ln2 = m.upload(to_bf16({&b.at(p + "post_attention_layernorm.weight")}));
    L.qkv = m.upload(to_bf16({&b.at(p + "self_attn.q_proj.weight"), &b.at(p + "self_attn.k_proj.weight"), &b.at(p + "self_attn.v_proj.weight")}));
    L.o = m.upload(to_bf16({&b.at(p + "self_attn.o_proj.weight")}));
    L.gate_up = m.upload(to_bf16({&b.at(p + "mlp.gate_proj.weight"), &b.at(p + "mlp.up_proj.weight")}));
    L.down = m.upload(to_bf16({&b.at(p + "mlp.down_proj.weight")}));
    m.layers.push_back(L);
  }

  // Activations for max_tokens rows.
  const size_t T = size_t(opt.max_tokens), R = size_t(std::min(opt.max_sample_rows, opt.max_tokens));
  const size_t d = size_t(c.d_model), hd = size_t(c.head_dim()), H = size_t(c.n_heads), Hkv = size_t(c.n_kv_heads);
  const size_t nqkv = (H + 2 * Hkv) * hd, slots = 2 * size_t(opt.max_splits);
  m.x = m.alloc<float>(T * d, "activations");
  m.xn = m.alloc<uint16_t>(T * std::max(d, H * hd), "activations");
  m.qkv = m.alloc<float>(T * nqkv, "activations");
  m.att = m.alloc<uint16_t>(T * H * hd, "activations");
  m.gu = m.alloc<float>(T * 2 * size_t(c.d_ff), "activations");
  m.h = m.alloc<uint16_t>(T * size_t(c.d_ff), "activations");
  m.o_part = m.alloc<float>(slots * T * H * hd, "attention partial states");
  m.lse_part = m.alloc<float>(slots * T * H, "attention partial states");
  m.logits = m.alloc<float>(R * size_t(c.vocab_size), "logits");
  m.merge_counters = m.alloc<int32_t>(T * Hkv, "attention counters");
  check_cuda(cudaMemset(m.merge_counters, 0, T * Hkv * 4), "attention counters");
  m.rope_sync = m.alloc<int32_t>(3, "attention counters");
  check_cuda(cudaMemset(m.rope_sync, 0, 3 * 4), "attention counters");
  {
    kern::AttnShape shape;
    shape.heads = int(H), shape.kv_heads = int(Hkv), shape.head_dim = int(hd), shape.page_size = opt.page_size;
    m.mma = kern::cuda::attention_mma_supported(shape) && !std::getenv("CHUNKWISE_ATTENTION_SIMT");
    if (!m.mma) {  // the cuBLAS path's gathered K/V and scores
      int rb = opt.max_tokens;
      while (rb > 16 && kern::cuda::paged_prefill_workspace(rb, int(c.max_seq_len), shape) > (size_t(1) << 30)) rb /= 2;
      m.prefill_row_block = rb;
      m.prefill_ws = m.alloc<char>(kern::cuda::paged_prefill_workspace(rb, int(c.max_seq_len), shape), "attention workspace");
    }
  }

  // Metadata: small arrays first (copied whole), page lists last (copied by extent).
  m.max_pages_listed = T * size_t((c.max_seq_len + opt.page_size - 1) / opt.page_size + 1);
  size_t off = 0;
  auto take = [&](size_t n) { size_t o = off; off += n; return o; };
  m.m_tokens = take(T), m.m_pos = take(T), m.m_slots = take(T), m.m_sample = take(T);
  for (auto& L : m.lv) {
    L.q_indptr = take(T + 1), L.kv_indptr = take(T + 1), L.kv_len = take(T), L.kv_pos0 = take(T);
    L.tile_item = take(T), L.tile_row0 = take(T);
  }
  m.small_end = off;
  for (auto& L : m.lv) L.kv_pages = take(m.max_pages_listed);
  m.meta_total = off;
  m.d_meta = m.alloc<int32_t>(m.meta_total, "step metadata");
  check_cuda(cudaMallocHost(&m.h_meta, m.meta_total * 4), "pinned step metadata");
  check_cuda(cudaMallocHost(&m.h_params, R * sizeof(kern::SampleParams)), "pinned sampling parameters");
  check_cuda(cudaMallocHost(&m.h_out, R * 4), "pinned sampled tokens");
  m.d_params = m.alloc<kern::SampleParams>(R, "sampling parameters");
  m.d_out = m.alloc<int32_t>(R, "sampled tokens");
  std::fill(m.h_meta, m.h_meta + m.meta_total, 0);

  // KV pages: what the options ask for, or a fraction of what is left.
  const size_t page_bytes = size_t(opt.page_size) * Hkv * hd * 2;  // one layer, K or V
  if (m.opt.num_pages == 0) {
    size_t free_b = 0, total_b = 0;
    check_cuda(cudaMemGetInfo(&free_b, &total_b), "reading free GPU memory");
    m.opt.num_pages = int(std::min<double>(2e9, double(free_b) * opt.kv_fraction / double(page_bytes * 2 * c.n_layers)));
  }
  check(m.opt.num_pages >= 2, "cuda backend: no room for KV pages (", m.opt.num_pages, "); lower max_tokens or free GPU memory");
  for (auto& L : m.layers) {
    L.k = m.alloc<uint16_t>(size_t(m.opt.num_pages) * page_bytes / 2, "KV pages");
    L.v = m.alloc<uint16_t>(size_t(m.opt.num_pages) * page_bytes / 2, "KV pages");
  }
  // CHUNKWISE_GEMM_CUTLASS=1: CUTLASS's Hopper kernels among the candidates timed for each product shape;
  // CHUNKWISE_GEMM_CUTLASS_FORCE=N: every product of more than four rows that configuration N takes runs on it.
  m.gemm = std::make_unique<TunedGemm>(m.blas, m.stream, m.blas_ws, ws, env_int("CHUNKWISE_GEMM_CUTLASS", 0) == 1,
                                       env_int("CHUNKWISE_GEMM_CUTLASS_FORCE", -1));
  if (!std::getenv("CHUNKWISE_GEMM_UNTUNED")) m.tune_products();
  check_cuda(cudaDeviceSynchronize(), "loading the model");
}

void CudaBackend::Impl::tune_products() {
  const int T_max = opt.max_tokens, R_max = std::min(opt.max_sample_rows, opt.max_tokens);
  const int d = int(c.d_model), hd = int(c.head_dim()), H = int(c.n_heads), Hkv = int(c.n_kv_heads);
  const int ff = int(c.d_ff), V = int(c.vocab_size), nqkv = (H + 2 * Hkv) * hd;
  // bf16 0x3c3c (about 0.0115) everywhere: finite products whatever the weights.
  check_cuda(cudaMemsetAsync(xn, 0x3c, size_t(T_max) * size_t(std::max(d, H * hd)) * 2, stream), "tuning products");
  check_cuda(cudaMemsetAsync(h, 0x3c, size_t(T_max) * size_t(ff) * 2, stream), "tuning products");
  const Layer& L = layers.front();
  std::vector<int> counts;
  for (int T = 8; T < T_max; T *= 2) counts.push_back(T);
  if (T_max > 4) counts.push_back(T_max);
  for (int T : counts) {  // scratch: gu holds T_max * 2 ff floats, logits R_max * V
    gemm->tune(T, nqkv, d, L.qkv, xn, gu);
    gemm->tune(T, d, H * hd, L.o, xn, gu);
    gemm->tune(T, 2 * ff, d, L.gate_up, xn, gu);
    gemm->tune(T, d, ff, L.down, h, gu);
    if (T <= R_max) gemm->tune(T, V, d, lm_head, xn, logits);
  }
}

CudaBackend::~CudaBackend() {
  Impl& m = *impl_;
  for (auto& [b, g] : m.graphs) cudaGraphExecDestroy(g);
  if (m.blas) cublasDestroy(m.blas);
  for (void* p : m.allocations) cudaFree(p);
  if (m.h_meta) cudaFreeHost(m.h_meta);
  if (m.h_params) cudaFreeHost(m.h_params);
  if (m.h_out) cudaFreeHost(m.h_out);
  if (m.stream) cudaStreamDestroy(m.stream);
}

const ModelConfig& CudaBackend::config() const { return impl_->c; }
int CudaBackend::page_size() const { return impl_->opt.page_size; }
int CudaBackend::num_pages() const { return impl_->opt.num_pages; }
int CudaBackend::max_tokens() const { return impl_->opt.max_tokens; }
std::string CudaBackend::device_name() const { return impl_->device; }
double CudaBackend::weight_bytes() const { return impl_->weight_bytes; }
int CudaBackend::graphs_captured() const { return int(impl_->graphs.size()); }
int64_t CudaBackend::rope_in_attention_steps() const { return impl_->rope_in_attn_steps; }
std::string CudaBackend::tuning_summary() const { return impl_->gemm->summary(); }
std::string CudaBackend::tuning_table_jsonl() const { return impl_->gemm->table_jsonl(); }

CudaBackend::Impl::Staged CudaBackend::Impl::stage(const StepPlan& plan, bool allow_graph) {
  Impl& m = *this;
  Staged st;
  plan.validate(m.opt.page_size, m.opt.num_pages);
  const int T = plan.rows(), R = int(plan.sample_rows.size()), levels = int(plan.levels.size());
  check(T <= m.opt.max_tokens, "cuda backend: a step of ", T, " rows exceeds max_tokens ", m.opt.max_tokens);
  check(R <= std::min(m.opt.max_sample_rows, m.opt.max_tokens), "cuda backend: ", R, " sample rows exceed the maximum");
  check(levels <= 2, "cuda backend: at most two attention levels");
  for (int32_t t : plan.tokens) check(t >= 0 && t < m.c.vocab_size, "token id ", t, " is outside the vocabulary");
  const bool decode_only = plan.decode_only();
  const bool graph = allow_graph && m.opt.cuda_graphs && decode_only;
  auto dense_item = [&](const AttnItem& it) { return !m.mma && it.q_end - it.q_begin >= 16 && it.kv_len >= 1; };
  int longest = 0;  // the longest chunk of the step: chunk tiles of 2 or 4 query warps
  for (const auto& lvl : plan.levels)
    for (const auto& it : lvl) longest = std::max(longest, it.q_end - it.q_begin);
  const int wide_qw = m.fixed_qw == 2 || m.fixed_qw == 4 ? m.fixed_qw : longest >= m.qw4_rows ? 4 : 2;
  const int wide_rpt = m.mma ? m.chunk_rpt(wide_qw) : 0;
  auto wide_item = [&](const AttnItem& it) { return m.mma && it.q_end - it.q_begin >= std::max(wide_rpt, m.wide_rows); };
  // Other steps padded to a few launch shapes where their graphs are wanted (graph_mixed_steps; padded even
  // without graphs, so that eager and replayed steps of one shape can be compared): rows to a multiple of 32,
  // sample rows to a multiple of 16, narrow attention tiles to a multiple of 16 (no-op tiles), split-KV from the
  // padded tile count. Single-level steps on tensor cores without chunk tiles (decodes beside short chunks).
  const bool pad = !graph && allow_graph && m.opt.graph_mixed_steps && m.mma && levels == 1 &&
                   std::none_of(plan.levels[0].begin(), plan.levels[0].end(), wide_item);
  auto round_up = [](int n, int to) { return (n + to - 1) / to * to; };
  int B = T, Rp = R;
  if (graph) {
    B = 1;
    while (B < T) B *= 2;
    B = std::min(B, std::min(m.opt.max_tokens, m.opt.max_sample_rows));
    Rp = B;
  } else if (pad) {
    B = std::min(m.opt.max_tokens, round_up(T, 32));
    Rp = std::min({B, m.opt.max_sample_rows, round_up(R, 16)});
  }
  int32_t* hm = m.h_meta;
  for (int r = 0; r < B; ++r) {
    const bool real = r < T;
    hm[m.m_tokens + r] = real ? plan.tokens[size_t(r)] : 0;
    hm[m.m_pos + r] = real ? plan.positions[size_t(r)] : 0;
    hm[m.m_slots + r] = real ? plan.slots[size_t(r)] : 0;  // padding writes the scratch page
  }
  for (int i = 0; i < Rp; ++i) {
    hm[m.m_sample + i] = i < R ? plan.sample_rows[size_t(i)] : i;
    m.h_params[i] = i < R ? plan.sample_params[size_t(i)] : kern::SampleParams{};
  }
  const int rpt_multi = kern::attention_rows_per_tile(int(m.c.n_heads), int(m.c.n_kv_heads));
  int rpts[2] = {1, 1};
  for (int li = 0; li < levels; ++li)
    for (const auto& it : plan.levels[size_t(li)])
      if (!dense_item(it) && !wide_item(it) && it.q_end - it.q_begin > 1) rpts[li] = rpt_multi;
  int items[2] = {0, 0}, tiles[2] = {0, 0}, wide_tiles[2] = {0, 0}, splits[2] = {1, 1}, wide_splits = 1;
  size_t pages_used[2] = {0, 0};
  std::vector<int32_t> q_indptr, tile_item, tile_row0, wide_item_of, wide_row0;
  m.dense[0].clear(), m.dense[1].clear();
  for (int li = 0; li < levels; ++li) {
    const auto& lvl = plan.levels[size_t(li)];
    const auto& L = m.lv[li];
    const int rpt = rpts[li];
    q_indptr.assign(1, 0);
    tile_item.clear(), tile_row0.clear(), wide_item_of.clear(), wide_row0.clear();
    size_t np = 0;
    int max_kv = 0, narrow_kv = 0, wide_kv = 0;
    hm[L.kv_indptr] = 0;
    const int n_items = graph || pad ? B : int(lvl.size());
    for (int i = 0; i < n_items; ++i) {
      const bool real = i < int(lvl.size());
      if (real) {
        const auto& it = lvl[size_t(i)];
        check(np + it.pages.size() <= m.max_pages_listed, "cuda backend: the step lists too many KV pages");
        const int rows_i = it.q_end - it.q_begin;
        if (dense_item(it)) m.dense[li].push_back({it.q_begin, rows_i, it.kv_len, it.kv_pos0, np});
        else if (wide_item(it))
          for (int r = it.q_begin; r < it.q_end; r += wide_rpt) wide_item_of.push_back(i), wide_row0.push_back(r);
        else
          for (int r = it.q_begin; r < it.q_end; r += rpt) tile_item.push_back(i), tile_row0.push_back(r);
        std::copy(it.pages.begin(), it.pages.end(), hm + L.kv_pages + np);
        np += it.pages.size();
        hm[L.kv_len + i] = it.kv_len, hm[L.kv_pos0 + i] = it.kv_pos0;
        q_indptr.push_back(it.q_end);
        if (!dense_item(it)) max_kv = std::max(max_kv, it.kv_len);
        if (wide_item(it)) wide_kv = std::max(wide_kv, it.kv_len);
        else if (!dense_item(it)) narrow_kv = std::max(narrow_kv, it.kv_len);
      } else if (graph) {  // a padding row of its own
        hm[L.kv_len + i] = 0, hm[L.kv_pos0 + i] = 0;
        q_indptr.push_back(i + 1);
        tile_item.push_back(i), tile_row0.push_back(i);
      } else {  // an empty item (padded steps: a fixed item count)
        hm[L.kv_len + i] = 0, hm[L.kv_pos0 + i] = 0;
        q_indptr.push_back(q_indptr.back());
      }
      hm[L.kv_indptr + i + 1] = int32_t(np);
    }
    if (pad)  // no-op tiles: a first row past every item's rows
      for (int n = std::min(m.opt.max_tokens, round_up(int(tile_item.size()), 16)); int(tile_item.size()) < n;)
        tile_item.push_back(0), tile_row0.push_back(B);
    tiles[li] = int(tile_item.size()), wide_tiles[li] = int(wide_item_of.size());
    tile_item.insert(tile_item.end(), wide_item_of.begin(), wide_item_of.end());
    tile_row0.insert(tile_row0.end(), wide_row0.begin(), wide_row0.end());
    std::copy(q_indptr.begin(), q_indptr.end(), hm + L.q_indptr);
    std::copy(tile_item.begin(), tile_item.end(), hm + L.tile_item);
    std::copy(tile_row0.begin(), tile_row0.end(), hm + L.tile_row0);
    items[li] = n_items, pages_used[li] = np;
    const int blocks = int(tile_item.size()) * int(m.c.n_kv_heads);
    if (m.mma && levels == 1 && wide_tiles[li] > 0) {  // one launch: decode tiles as usual, chunk tiles by keys
      splits[li] = m.splits_for(blocks, tiles[li] > 0 ? narrow_kv : max_kv, false);
      const int keys = std::max(64, (narrow_kv + splits[li] - 1) / splits[li]);
      wide_splits = m.chunk_splits > 0                        ? m.chunk_splits
                    : m.chunk_splits < 0 && tiles[li] > 0 ? (wide_kv + keys - 1) / keys
                                                          : splits[li];
      wide_splits = std::max(1, std::min(wide_splits, m.opt.max_splits));
    } else {
      splits[li] = blocks == 0 ? 1 : m.splits_for(blocks, graph || pad ? -1 : max_kv, wide_tiles[li] > 0, decode_only);
    }
  }
  auto copy_in = [&](size_t off, size_t n) {
    if (n) check_cuda(cudaMemcpyAsync(m.d_meta + off, hm + off, n * 4, cudaMemcpyHostToDevice, m.stream), "copying step metadata");
  };
  copy_in(0, m.small_end);
  for (int li = 0; li < levels; ++li) copy_in(m.lv[li].kv_pages, pages_used[li]);
  check_cuda(cudaMemcpyAsync(m.d_params, m.h_params, size_t(Rp) * sizeof(kern::SampleParams),
                             cudaMemcpyHostToDevice, m.stream), "copying sampling parameters");
  st.decode = decode_only;
  // The rope phase finds an item's new keys as its last ones and caches them at the rows' slots: both must hold.
  st.last_keys = levels == 1;
  for (const AttnItem& it : plan.levels[0]) {
    const int n = it.q_end - it.q_begin, P = m.opt.page_size;
    st.last_keys = st.last_keys && n >= 1 && it.kv_len >= n;
    for (int j = 0; j < n && st.last_keys; ++j) {
      const int r = it.q_begin + j, t = it.kv_len - n + j;
      st.last_keys = plan.positions[size_t(r)] == it.kv_pos0 + t &&
                     plan.slots[size_t(r)] == it.pages[size_t(t / P)] * P + t % P;
    }
    if (!st.last_keys) break;
  }
  st.graph = graph, st.B = B, st.Rp = Rp, st.T = T, st.R = R, st.levels = levels, st.wide_splits = wide_splits,
  st.wide_qw = wide_qw;
  for (int li = 0; li < 2; ++li)
    st.items[li] = items[li], st.tiles[li] = tiles[li], st.wide_tiles[li] = wide_tiles[li], st.splits[li] = splits[li],
    st.rpt[li] = rpts[li];
  // Merged in the attention launches unless cuBLAS items are present, or (two levels) chunk tiles would have to
  // merge several slots: there the separate merge kernel was quicker when a block merged its rows one warp at
  // a time (not re-measured since the merge uses the whole block). With one level the mixed launch merges
  // every tile, decode and chunk, in its last block.
  const int slots = levels == 2 ? splits[0] + splits[1] : std::max(splits[0], wide_splits);
  st.fused_merge = m.dense[0].empty() && m.dense[1].empty() &&
                   (wide_tiles[0] + wide_tiles[1] == 0 || slots == 1 || (m.mma && levels == 1));
  // Mixed steps replay too where their launches take no per-step host values: the cuBLAS attention items do.
  st.replay = graph || (allow_graph && m.opt.cuda_graphs && m.opt.graph_mixed_steps && m.dense[0].empty() &&
                        m.dense[1].empty());
  return st;
}

std::vector<int> CudaBackend::Impl::staged_key(const Staged& st) {
  if (st.graph) return {-1, st.B};
  return {st.B,        st.Rp,       st.levels,   st.items[0],      st.items[1],      st.tiles[0],
          st.tiles[1], st.splits[0], st.splits[1], st.rpt[0],        st.rpt[1],        st.wide_tiles[0],
          st.wide_tiles[1], st.wide_splits, st.wide_qw, int(st.fused_merge), int(st.decode), int(st.last_keys)};
}

void CudaBackend::Impl::execute(const Staged& st) {
  Impl& m = *this;
  if (!st.replay) return m.launch_all(st);
  const std::vector<int> key = staged_key(st);
  auto it = m.graphs.find(key);
  if (it == m.graphs.end()) {
    // Decode graphs at once (few shapes, every step); other shapes once seen twice, while there is room.
    const bool capture = st.graph || (m.graphs.size() < kMaxGraphs && ++m.shapes_seen[key] >= 2);
    if (!capture) return m.launch_all(st);
    cudaGraph_t g;
    check_cuda(cudaStreamBeginCapture(m.stream, cudaStreamCaptureModeThreadLocal), "capturing a step graph");
    m.launch_all(st);
    check_cuda(cudaStreamEndCapture(m.stream, &g), "capturing a step graph");
    cudaGraphExec_t exec;
    check_cuda(cudaGraphInstantiate(&exec, g, 0), "instantiating a step graph");
    cudaGraphDestroy(g);
    it = m.graphs.emplace(key, exec).first;
  }
  check_cuda(cudaGraphLaunch(it->second, m.stream), "replaying a step graph");
}

std::vector<int32_t> CudaBackend::forward(const StepPlan& plan, std::vector<float>* logits_out) {
  Impl& m = *impl_;
  const Impl::Staged st = m.stage(plan, !logits_out);
  m.execute(st);
  const int R = st.R;
  check_cuda(cudaMemcpyAsync(m.h_out, m.d_out, size_t(R) * 4, cudaMemcpyDeviceToHost, m.stream), "copying sampled tokens");
  if (logits_out) {
    logits_out->resize(size_t(R) * size_t(m.c.vocab_size));
    check_cuda(cudaMemcpyAsync(logits_out->data(), m.logits, logits_out->size() * 4, cudaMemcpyDeviceToHost, m.stream),
               "copying logits");
  }
  check_cuda(cudaStreamSynchronize(m.stream), "running a step");
  return std::vector<int32_t>(m.h_out, m.h_out + R);
}

CudaBackend::StepProfile CudaBackend::profile(const StepPlan& plan, int reps) {
  Impl& m = *impl_;
  StepProfile p;
  for (int i = 0; i < 2; ++i) forward(plan, nullptr);  // warm-up (a graph is captured when the shape repeats)
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) forward(plan, nullptr);
  p.forward_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0), cudaEventCreate(&e1);
  Impl::Staged st = m.stage(plan, true);
  if (st.replay && m.graphs.count(Impl::staged_key(st))) {
    m.execute(st);
    cudaEventRecord(e0, m.stream);
    for (int i = 0; i < reps; ++i) m.execute(st);
    cudaEventRecord(e1, m.stream);
    check_cuda(cudaEventSynchronize(e1), "profiling");
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    p.graph_ms = ms / reps;
  }
  cudaEventDestroy(e0), cudaEventDestroy(e1);
  st = m.stage(plan, false);
  std::map<std::string, double> sum;
  std::vector<std::string> order;
  for (int i = 0; i < reps; ++i) {
    std::vector<std::pair<const char*, cudaEvent_t>> marks;
    m.marks = &marks;
    m.execute(st);
    m.marks = nullptr;
    check_cuda(cudaStreamSynchronize(m.stream), "profiling");
    for (size_t k = 1; k < marks.size(); ++k) {
      float ms = 0;
      cudaEventElapsedTime(&ms, marks[k - 1].second, marks[k].second);
      if (!sum.count(marks[k].first)) order.push_back(marks[k].first);
      sum[marks[k].first] += ms / reps;
    }
    for (auto& [n, e] : marks) cudaEventDestroy(e);
  }
  for (auto& n : order) p.ops.push_back({n, sum[n]}), p.ops_total_ms += sum[n];
  return p;
}

std::vector<float> CudaBackend::cached(bool key, int layer, int slot) const {
  const Impl& m = *impl_;
  const size_t n = size_t(m.c.n_kv_heads * m.c.head_dim());
  std::vector<uint16_t> bits(n);
  const uint16_t* src = (key ? m.layers[size_t(layer)].k : m.layers[size_t(layer)].v) + size_t(slot) * n;
  check_cuda(cudaMemcpy(bits.data(), src, n * 2, cudaMemcpyDeviceToHost), "reading the KV cache");
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = kern::bf16_to_float(bits[i]);
  return out;
}

double CudaBackend::copy_bandwidth(size_t bytes) {
  char* a = device_alloc<char>(bytes, "bandwidth test");
  char* b = device_alloc<char>(bytes, "bandwidth test");
  check_cuda(cudaMemset(a, 1, bytes), "bandwidth test");
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0), cudaEventCreate(&e1);
  for (int i = 0; i < 3; ++i) cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
  const int reps = 20;
  cudaEventRecord(e0);
  for (int i = 0; i < reps; ++i) cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice);
  cudaEventRecord(e1);
  check_cuda(cudaEventSynchronize(e1), "bandwidth test");
  float ms = 0;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaEventDestroy(e0), cudaEventDestroy(e1);
  cudaFree(a), cudaFree(b);
  return 2.0 * double(bytes) * reps / (double(ms) / 1e3);
}

}  // namespace cw::serve
