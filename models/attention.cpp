// Implementation of models/attention.h.
#include "models/attention.h"

#include <cmath>

#include <algorithm>
#include <atomic>
#include <vector>

#include "common/env.h"
#include "common/error.h"

namespace cw {

static int64_t offset_of(int64_t Tq, int64_t Tk, const AttnMask& m) { return m.q_offset < 0 ? Tk - Tq : m.q_offset; }

torch::Tensor build_attention_mask(int64_t Tq, int64_t Tk, const AttnMask& m, const torch::Device& device) {
  torch::Tensor mask;
  auto opts = torch::TensorOptions().dtype(torch::kInt64).device(device);
  if (m.causal || m.window > 0) {
    auto qi = torch::arange(Tq, opts).unsqueeze(1) + offset_of(Tq, Tk, m);
    auto kj = torch::arange(Tk, opts).unsqueeze(0);
    mask = m.causal ? kj <= qi : torch::ones({Tq, Tk}, opts.dtype(torch::kBool));
    if (m.window > 0) mask = mask & ((qi - kj) < m.window);
    mask = mask.view({1, 1, Tq, Tk});
  }
  if (m.q_segments.defined()) {
    auto seg = m.q_segments.unsqueeze(2).eq(m.k_segments.unsqueeze(1)).unsqueeze(1);  // [B,1,Tq,Tk]
    mask = mask.defined() ? (mask & seg) : seg;
  }
  return mask;
}

void attach_segment_runs(AttnMask& m) {
  const auto& seg = m.q_segments;
  const int64_t B = seg.size(0), T = seg.size(1);
  auto start = torch::ones({B, T}, seg.options().dtype(torch::kBool));
  if (T > 1) start.narrow(1, 1, T - 1).copy_(seg.narrow(1, 1, T - 1).ne(seg.narrow(1, 0, T - 1)));
  auto first = start.reshape({-1}).nonzero().squeeze(1);
  auto cu = torch::cat({first, torch::full({1}, B * T, first.options())}).to(torch::kInt32);
  m.max_seqlen = (cu.narrow(0, 1, cu.size(0) - 1) - cu.narrow(0, 0, cu.size(0) - 1)).max().item<int64_t>();
  m.cu_seqlens = cu;
}

// Flash attention over the runs of m.cu_seqlens: causal within each run, nothing across runs.
static bool varlen_applies(const torch::Tensor& q, const torch::Tensor& k, const AttnMask& m, bool square_causal) {
  const auto dt = q.scalar_type();
  const int64_t hd = q.size(3);
  return m.cu_seqlens.defined() && square_causal && q.is_cuda() && (dt == torch::kBFloat16 || dt == torch::kHalf) &&
         k.scalar_type() == dt && hd % 8 == 0 && hd <= 256;
}
static torch::Tensor attend_varlen(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   const AttnMask& m) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), Hkv = k.size(1), D = q.size(3);
  auto flat = [&](const torch::Tensor& x, int64_t h) { return x.transpose(1, 2).reshape({B * T, h, D}); };
  auto out = std::get<0>(at::_flash_attention_forward(flat(q, H), flat(k, Hkv), flat(v, Hkv), m.cu_seqlens,
                                                      m.cu_seqlens, m.max_seqlen, m.max_seqlen, 0.0,
                                                      /*is_causal=*/true, /*return_debug_mask=*/false));
  return out.view({B, T, H, D}).transpose(1, 2);
}

// A chunk after earlier keys (SeCO/SpaCO): bottom-right causal, no documents. Flash attention's causal mask is
// aligned bottom-right when there are more keys than queries, so it needs no mask (SDPA's is_causal is top-left,
// and an explicit mask costs queries x keys and leaves flash).
static EnvSwitch g_chunk_flash("CHUNKWISE_CHUNK_FLASH", true);
static std::atomic<int64_t> g_chunk_flash_calls{0};
int64_t chunk_flash_calls() { return g_chunk_flash_calls.load(); }
static bool chunk_flash_applies(const torch::Tensor& q, const torch::Tensor& k, const AttnMask& m) {
  const int64_t Tq = q.size(2), Tk = k.size(2);
  const auto dt = q.scalar_type();
  return m.causal && Tq < Tk && offset_of(Tq, Tk, m) == Tk - Tq && m.window <= 0 && !m.q_segments.defined() &&
         q.is_cuda() && (dt == torch::kBFloat16 || dt == torch::kHalf) && k.scalar_type() == dt &&
         q.size(3) % 8 == 0 && q.size(3) <= 256 && g_chunk_flash.on();
}
static torch::Tensor attend_chunk_flash(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), Hkv = k.size(1), Tk = k.size(2), D = q.size(3);
  auto flat = [&](const torch::Tensor& x, int64_t h, int64_t t) { return x.transpose(1, 2).reshape({B * t, h, D}); };
  auto rows = torch::arange(B + 1, q.options().dtype(torch::kInt32));
  g_chunk_flash_calls.fetch_add(1);
  auto out = std::get<0>(at::_flash_attention_forward(flat(q, H, Tq), flat(k, Hkv, Tk), flat(v, Hkv, Tk), rows * Tq,
                                                      rows * Tk, Tq, Tk, 0.0, /*is_causal=*/true,
                                                      /*return_debug_mask=*/false));
  return out.view({B, Tq, H, D}).transpose(1, 2);
}

// A square causal sliding window shorter than the sequence, without documents: blocks of WINDOW queries, each
// against the at most 2 WINDOW - 1 keys it can see, so memory grows with T x WINDOW, not with the T x T mask.
static bool local_blocks_apply(int64_t Tq, int64_t Tk, const AttnMask& m) {
  return m.causal && Tq == Tk && offset_of(Tq, Tk, m) == 0 && m.window > 0 && m.window < Tq &&
         !m.q_segments.defined();
}
static torch::Tensor attend_local_blocks(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                         int64_t window) {
  const int64_t T = q.size(2);
  std::vector<torch::Tensor> outs;
  for (int64_t s = 0; s < T; s += window) {
    const int64_t n = std::min(window, T - s), k0 = std::max<int64_t>(0, s - window + 1);
    AttnMask m;  // the block's queries start s - k0 keys into its slice
    m.q_offset = s - k0, m.window = window;
    outs.push_back(attend(q.narrow(2, s, n), k.narrow(2, k0, s + n - k0), v.narrow(2, k0, s + n - k0), m));
  }
  return torch::cat(outs, 2);
}

torch::Tensor append_to_window(const torch::Tensor& old, const torch::Tensor& fresh, int64_t window) {
  auto all = old.defined() ? torch::cat({old, fresh}, 2) : fresh;
  return all.size(2) > window ? all.narrow(2, all.size(2) - window, window).contiguous() : all;
}

torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const AttnMask& m) {
  const int64_t Tq = q.size(2), Tk = k.size(2);
  if (local_blocks_apply(Tq, Tk, m)) return attend_local_blocks(q, k, v, m.window);
  const bool gqa = q.size(1) != k.size(1);
  const bool square_causal = m.causal && Tq == Tk && offset_of(Tq, Tk, m) == 0 && m.window <= 0;
  if (m.q_segments.defined() && varlen_applies(q, k, m, square_causal)) return attend_varlen(q, k, v, m);
  if (chunk_flash_applies(q, k, m)) return attend_chunk_flash(q, k, v);
  const bool plain_causal = square_causal && !m.q_segments.defined();
  if (plain_causal)
    return at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true, std::nullopt, gqa);
  torch::Tensor mask = build_attention_mask(Tq, Tk, m, q.device());
  std::optional<torch::Tensor> opt_mask;
  if (mask.defined()) opt_mask = mask;
  return at::scaled_dot_product_attention(q, k, v, opt_mask, 0.0, false, std::nullopt, gqa);
}

// LibTorch settles its priority order on its first scaled-dot-product dispatch (priority_order() in
// sdp_utils.cpp puts cuDNN first on some cards then), overwriting an order set before. One dispatch decision
// on tiny inputs first makes that happen now, so the order set afterwards stays.
static void settle_libtorch_sdp_order() {
  static const bool settled = [] {
    if (!torch::cuda::is_available()) return true;
    auto t = torch::zeros({1, 1, 8, 64}, torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA));
    at::_fused_sdp_choice(t, t, t, std::nullopt, 0.0, true, std::nullopt, false);
    return true;
  }();
  (void)settled;
}

void set_attention_backend(const std::string& name) {
  using B = at::SDPBackend;
  settle_libtorch_sdp_order();
  // LibTorch's own order, as found before the first change.
  static const std::vector<int64_t> libtorch_order = [] {
    std::vector<int64_t> ids;
    for (B b : at::globalContext().sDPPriorityOrder()) ids.push_back(int64_t(b));
    return ids;
  }();
  if (name == "auto") return at::globalContext().setSDPPriorityOrder(libtorch_order);
  std::vector<B> order;
  if (name == "flash") order = {B::flash_attention, B::cudnn_attention, B::efficient_attention, B::math, B::overrideable};
  else if (name == "cudnn")
    order = {B::cudnn_attention, B::flash_attention, B::efficient_attention, B::math, B::overrideable};
  else fail("attention backend '", name, "': use auto, flash or cudnn");
  std::vector<int64_t> ids;
  for (B b : order) ids.push_back(int64_t(b));
  at::globalContext().setSDPPriorityOrder(ids);
}

std::string attention_backend_for(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  const int64_t id = at::_fused_sdp_choice(q, k, v, std::nullopt, 0.0, true, std::nullopt, q.size(1) != k.size(1));
  switch (at::SDPBackend(id)) {
    case at::SDPBackend::flash_attention: return "flash";
    case at::SDPBackend::efficient_attention: return "efficient";
    case at::SDPBackend::cudnn_attention: return "cudnn";
    case at::SDPBackend::math: return "math";
    default: return "other";
  }
}

torch::Tensor attend_reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const AttnMask& m) {
  const int64_t group = q.size(1) / k.size(1);
  auto kk = k.repeat_interleave(group, 1), vv = v.repeat_interleave(group, 1);
  auto scores = torch::matmul(q.to(torch::kFloat64), kk.to(torch::kFloat64).transpose(-2, -1)) /
                std::sqrt(double(q.size(-1)));
  torch::Tensor mask = build_attention_mask(q.size(2), k.size(2), m, q.device());
  if (mask.defined()) scores = scores.masked_fill(mask.logical_not(), -INFINITY);
  auto probs = torch::softmax(scores, -1);
  probs = torch::nan_to_num(probs, 0.0);  // a query that sees no key gets zeros, not NaN
  return torch::matmul(probs, vv.to(torch::kFloat64)).to(q.scalar_type());
}

}  // namespace cw
