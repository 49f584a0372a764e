// Attention behind one function. `attend` picks LibTorch's fused scaled-dot-product attention with
// is_causal when the mask is plain causal and square, and an explicit boolean mask otherwise;
// `attend_reference` is the plain softmax(QK^T/sqrt(d))V twin that tests compare against. Document masks
// whose segments are runs (see attach_segment_runs) take flash attention's variable-length kernel on CUDA.
// Layout: q [B, Hq, Tq, D], k and v [B, Hkv, Tk, D] with Hq a multiple of Hkv (grouped-query).
// Must not: change q/k/v (no RoPE here) or assume Tq == Tk.
#pragma once
#include <torch/torch.h>

namespace cw {

struct AttnMask {
  bool causal = true;
  // Absolute position of query 0 minus that of key 0. -1 = bottom-right alignment (Tk - Tq): the queries
  // are the last Tq positions, as in chunked training and chunked prefill.
  int64_t q_offset = -1;
  torch::Tensor q_segments, k_segments;  // [B, Tq], [B, Tk]; attend only where equal (undefined = off)
  int64_t window = 0;                    // > 0: key j visible from query i only if i - j < window
  // Optional, from attach_segment_runs: the segments as runs over the flattened [B*T] tokens, int32
  // cumulative lengths [runs + 1], and the longest run. Valid only when every segment id of a row is one run.
  torch::Tensor cu_seqlens;
  int64_t max_seqlen = 0;
};

// Fills m.cu_seqlens and m.max_seqlen from m.q_segments [B, T]: a run starts at every row start and wherever
// the id changes (one host synchronisation). For a square causal mask whose segments are contiguous runs with
// distinct ids within a row (the packing sampler's), attending within runs equals attending within segments.
void attach_segment_runs(AttnMask& m);

// A square causal sliding window shorter than the sequence (no documents) runs in blocks of `window` queries
// against the keys each block can see: memory O(T x window) instead of the T x T mask.
// On CUDA in bf16/fp16, a chunk after earlier keys (bottom-right causal, Tq < Tk, no documents) takes flash
// attention's variable-length kernel, whose causal mask is aligned bottom-right; CHUNKWISE_CHUNK_FLASH=0 keeps
// the explicit mask. chunk_flash_calls() counts those launches (tests).
torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const AttnMask& m);
int64_t chunk_flash_calls();

// The fused kernel LibTorch's scaled-dot-product attention tries first on CUDA, process-wide: "auto"
// (LibTorch's own order; torch 2.11 on an H200 picks cuDNN for causal bf16), "flash" (FlashAttention-2 first)
// or "cudnn" (cuDNN's fused attention first); where the first one's constraints fail, the others follow.
// `[train] attention`.
void set_attention_backend(const std::string& name);
// The backend SDPA would pick for these inputs with a plain causal mask ("flash", "cudnn", ...).
std::string attention_backend_for(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);
// A sliding-window decode cache's keys or values: OLD [B, H, n, D] (undefined when empty) with FRESH appended
// along the tokens, keeping the last WINDOW.
torch::Tensor append_to_window(const torch::Tensor& old, const torch::Tensor& fresh, int64_t window);
torch::Tensor attend_reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const AttnMask& m);
// Boolean [B or 1, 1, Tq, Tk], true where attention is allowed (undefined when nothing is masked).
torch::Tensor build_attention_mask(int64_t Tq, int64_t Tk, const AttnMask& m, const torch::Device& device);

}  // namespace cw
