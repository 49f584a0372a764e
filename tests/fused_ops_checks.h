// Checks of the fused training ops (models/fused_ops.h) against their LibTorch references on fresh random
// inputs, for one device and storage dtype: forward values and gradients; and training with the kept bf16
// weight copies against training without them. Shared by the CPU suite
// (test_fused_ops.cpp) and the GPU suite (gpu/test_gpu_train.cpp) so both run the same comparisons.
// Must not: print instead of asserting, or compare a fused op with itself.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "data/batch.h"
#include "models/fused_ops.h"
#include "models/linear_cross_entropy.h"
#include "models/llama.h"
#include "models/mixed_linear.h"
#include "models/weight_copies.h"
#include "train/adamw.h"
#include "train/precision.h"

namespace cw::test {

// Largest absolute difference over the reference's largest magnitude (0 when both are zero); never NaN.
inline double max_relative_error(const torch::Tensor& got, const torch::Tensor& want) {
  auto g = got.detach().to(torch::kFloat64).cpu(), w = want.detach().to(torch::kFloat64).cpu();
  EXPECT_FALSE(g.isnan().any().item<bool>()) << "NaN in the fused result";
  const double scale = std::max(w.abs().max().item<double>(), 1e-30);
  return (g - w).abs().max().item<double>() / scale;
}
// ||got - want|| / ||want||: for whole-model gradients, where a few bf16 roundings differ.
inline double norm_relative_error(const torch::Tensor& got, const torch::Tensor& want) {
  auto g = got.detach().to(torch::kFloat64).cpu(), w = want.detach().to(torch::kFloat64).cpu();
  EXPECT_FALSE(g.isnan().any().item<bool>()) << "NaN in the fused result";
  return (g - w).norm().item<double>() / std::max(w.norm().item<double>(), 1e-30);
}

inline torch::TensorOptions fused_opts(torch::Device device, torch::ScalarType dtype) {
  return torch::TensorOptions().device(device).dtype(dtype);
}

// q, k, v of fused_rope_qkv vs split + apply_rope in fp32 (on the same, possibly bf16-rounded, inputs), the
// three as views of qkv (rotated in place), and the gradient of a random weighted sum of all three outputs with
// respect to qkv.
// `repeats` copies of the two sequences make the batch (repeats 2,000 gives the GPU more units than threads).
inline void check_fused_rope_qkv(torch::Device device, torch::ScalarType dtype, double tol, int64_t hd,
                                 int64_t repeats = 1) {
  const int64_t B = 2 * repeats, T = 7, H = 4, Hkv = 2, W = (H + 2 * Hkv) * hd;
  auto qkv = torch::randn({B, T, W}, fused_opts(device, dtype)).requires_grad_(true);
  // Positions restart inside the second row (document-masked packing) and reach far positions.
  auto pos = torch::tensor({0, 1, 2, 3, 4, 5, 6, 900, 901, 0, 1, 2, 3, 4}, torch::kInt64)
                 .view({2, T})
                 .repeat({repeats, 1})
                 .to(device);
  auto [cos, sin] = rope_tables(pos, hd, 10000.0);
  auto wq = torch::randn({B, T, H, hd}, fused_opts(device, torch::kFloat32));
  auto wk = torch::randn({B, T, Hkv, hd}, wq.options()), wv = torch::randn({B, T, Hkv, hd}, wq.options());

  const auto original = qkv.detach().clone();  // fused_rope_qkv rotates in qkv's storage
  auto out = fused_rope_qkv(qkv, cos, sin, H, Hkv);
  ASSERT_EQ(out[0].sizes(), (std::vector<int64_t>{B, T, H, hd}));
  ASSERT_EQ(out[1].sizes(), (std::vector<int64_t>{B, T, Hkv, hd}));
  for (const auto& o : out) EXPECT_TRUE(o.is_alias_of(qkv)) << "q, k and v are views of qkv, not copies";
  auto loss = (out[0].to(torch::kFloat32) * wq).sum() + (out[1].to(torch::kFloat32) * wk).sum() +
              (out[2].to(torch::kFloat32) * wv).sum();
  loss.backward();
  auto grad = qkv.grad().clone();

  auto ref_in = original.to(torch::kFloat32).requires_grad_(true);
  auto parts = ref_in.split({H * hd, Hkv * hd, Hkv * hd}, -1);
  auto rq = apply_rope(parts[0].view({B, T, H, hd}).transpose(1, 2), cos, sin).transpose(1, 2);
  auto rk = apply_rope(parts[1].view({B, T, Hkv, hd}).transpose(1, 2), cos, sin).transpose(1, 2);
  auto rv = parts[2].view({B, T, Hkv, hd});
  ((rq * wq).sum() + (rk * wk).sum() + (rv * wv).sum()).backward();

  EXPECT_LE(max_relative_error(out[0], rq), tol) << "q";
  EXPECT_LE(max_relative_error(out[1], rk), tol) << "k";
  EXPECT_LE(max_relative_error(out[2], rv), tol) << "v";
  EXPECT_LE(max_relative_error(grad, ref_in.grad()), tol) << "d qkv";
}

// F a multiple of 8: the GPU moves 16-byte packs; otherwise one element at a time. `batch` x 5 rows.
inline void check_fused_swiglu(torch::Device device, torch::ScalarType dtype, double tol, int64_t F = 24,
                               int64_t batch = 3) {
  auto gu = (torch::randn({batch, 5, 2 * F}, fused_opts(device, dtype)) * 3).requires_grad_(true);
  auto w = torch::randn({batch, 5, F}, fused_opts(device, torch::kFloat32));
  auto h = fused_swiglu(gu);
  ASSERT_EQ(h.sizes(), (std::vector<int64_t>{batch, 5, F}));
  (h.to(torch::kFloat32) * w).sum().backward();

  auto ref_in = gu.detach().to(torch::kFloat32).requires_grad_(true);
  auto parts = ref_in.chunk(2, -1);
  auto rh = torch::silu(parts[0]) * parts[1];
  (rh * w).sum().backward();
  EXPECT_LE(max_relative_error(h, rh), tol) << "h";
  EXPECT_LE(max_relative_error(gu.grad(), ref_in.grad()), tol) << "d gate_up";
}

// fused_swiglu_down (h recomputed in the backward pass) vs (silu(g) * u) W^T in fp32: output and both gradients.
inline void check_fused_swiglu_down(torch::Device device, torch::ScalarType dtype, double tol) {
  const int64_t F = 24, d = 12;
  auto gu = (torch::randn({3, 5, 2 * F}, fused_opts(device, torch::kFloat32)) * 2).to(dtype).requires_grad_(true);
  auto w = torch::randn({d, F}, fused_opts(device, torch::kFloat32)).to(dtype).requires_grad_(true);
  auto wy = torch::randn({3, 5, d}, fused_opts(device, torch::kFloat32));
  auto y = fused_swiglu_down(gu, w);
  (y.to(torch::kFloat32) * wy).sum().backward();
  auto rgu = gu.detach().to(torch::kFloat32).requires_grad_(true), rw = w.detach().to(torch::kFloat32).requires_grad_(true);
  auto parts = rgu.chunk(2, -1);
  auto ry = torch::matmul(torch::silu(parts[0]) * parts[1], rw.t());
  (ry * wy).sum().backward();
  EXPECT_LE(max_relative_error(y, ry), tol) << "y";
  EXPECT_LE(max_relative_error(gu.grad(), rgu.grad()), tol) << "d gate_up";
  EXPECT_LE(max_relative_error(w.grad(), rw.grad()), tol) << "d w";
}

// mixed_linear over three weights (q/k/v-like rows) vs torch::linear(x, cat(weights)) under the same autocast:
// output, input gradient and each weight's gradient (fp32, the weights' dtype), and frozen weights getting no
// gradient. exact_dw: the weight gradient must also equal the fp64 product of the same bf16 operands to 1e-5
// (what writing it in fp32 from the product's accumulators gives; a bf16 result rounds at about 4e-3).
inline void check_mixed_linear(torch::Device device, bool bf16, double tol, int64_t in, int64_t rows,
                               bool exact_dw = false) {
  auto f32 = fused_opts(device, torch::kFloat32);
  auto x = torch::randn({3, 5, in}, f32).requires_grad_(true);
  std::vector<torch::Tensor> ws{torch::randn({rows, in}, f32).requires_grad_(true),
                                torch::randn({rows / 4, in}, f32).requires_grad_(true),
                                torch::randn({rows / 4, in}, f32).requires_grad_(true)};
  auto wy = torch::randn({3, 5, rows + rows / 2}, f32);
  torch::Tensor y, ry;
  std::vector<torch::Tensor> rws;
  for (const auto& w : ws) rws.push_back(w.detach().clone().requires_grad_(true));
  auto rx = x.detach().clone().requires_grad_(true);
  {
    AutocastScope autocast(device, bf16 ? "bf16" : "fp32");
    y = mixed_linear(x, ws);
    ry = torch::linear(rx, torch::cat(rws));
  }
  ASSERT_EQ(y.scalar_type(), ry.scalar_type());
  ASSERT_EQ(y.sizes(), ry.sizes());
  (y.to(torch::kFloat32) * wy).sum().backward();
  (ry.to(torch::kFloat32) * wy).sum().backward();
  EXPECT_LE(max_relative_error(y, ry), tol) << "y";
  EXPECT_LE(max_relative_error(x.grad(), rx.grad()), tol) << "dx";
  ASSERT_EQ(x.grad().scalar_type(), torch::kFloat32);
  for (size_t i = 0; i < ws.size(); ++i) {
    ASSERT_TRUE(ws[i].grad().defined()) << "weight " << i;
    EXPECT_EQ(ws[i].grad().scalar_type(), torch::kFloat32) << "weight " << i;
    EXPECT_EQ(ws[i].grad().sizes(), ws[i].sizes()) << "weight " << i;
    EXPECT_LE(max_relative_error(ws[i].grad(), rws[i].grad()), tol) << "d weight " << i;
  }
  if (exact_dw) {  // dW = dy^T x with dy = wy and x as the product saw them (bf16)
    auto xd = x.detach().to(torch::kBFloat16).to(torch::kFloat64).reshape({-1, in});
    auto dyd = wy.to(torch::kBFloat16).to(torch::kFloat64).reshape({-1, rows + rows / 2});
    auto exact = torch::mm(dyd.t(), xd);
    EXPECT_LE(max_relative_error(torch::cat({ws[0].grad(), ws[1].grad(), ws[2].grad()}), exact), 1e-5)
        << "the weight gradient is not the fp32 product";
  }

  // Frozen weights (no weight gradient asked for): the input's gradient is still that of linear.
  auto x2 = x.detach().clone().requires_grad_(true), rx2 = x.detach().clone().requires_grad_(true);
  std::vector<torch::Tensor> frozen{ws[0].detach()};
  {
    AutocastScope autocast(device, bf16 ? "bf16" : "fp32");
    y = mixed_linear(x2, frozen);
    ry = torch::linear(rx2, frozen[0]);
  }
  y.to(torch::kFloat32).sum().backward();
  ry.to(torch::kFloat32).sum().backward();
  EXPECT_TRUE(x2.grad().defined());
  EXPECT_FALSE(frozen[0].grad().defined());
  EXPECT_LE(max_relative_error(x2.grad(), rx2.grad()), tol) << "dx, frozen weights";
}

// h and y of fused_add_rmsnorm vs x + delta and the RMSNorm formula in fp32, and the gradients of x, delta and
// w, with h read afterwards (the residual stream) or not.
inline void check_fused_add_rmsnorm(torch::Device device, torch::ScalarType delta_dtype, torch::ScalarType out_dtype,
                                    double tol, int64_t d, bool h_used, int64_t batch = 3) {
  auto f32 = fused_opts(device, torch::kFloat32);
  auto x = torch::randn({batch, 5, d}, f32).requires_grad_(true);
  auto delta = torch::randn({batch, 5, d}, f32).to(delta_dtype).requires_grad_(true);
  auto w = (torch::rand({d}, f32) + 0.5).requires_grad_(true);
  auto wh = torch::randn({batch, 5, d}, f32), wy = torch::randn({batch, 5, d}, f32);
  const double eps = 1e-5;
  auto out = fused_add_rmsnorm(x, delta, w, eps, out_dtype);
  EXPECT_EQ(out[0].scalar_type(), torch::kFloat32);
  EXPECT_EQ(out[1].scalar_type(), out_dtype);
  auto loss = (out[1].to(torch::kFloat32) * wy).sum();
  if (h_used) loss = loss + (out[0] * wh).sum();
  loss.backward();

  auto rx = x.detach().clone().requires_grad_(true), rd = delta.detach().to(torch::kFloat32).requires_grad_(true),
       rw = w.detach().clone().requires_grad_(true);
  auto h = rx + rd;
  auto y = h * torch::rsqrt(h.pow(2).mean(-1, true) + eps) * rw;
  auto rloss = (y * wy).sum();
  if (h_used) rloss = rloss + (h * wh).sum();
  rloss.backward();
  EXPECT_LE(max_relative_error(out[0], h), tol) << "h";
  EXPECT_LE(max_relative_error(out[1], y), tol) << "y";
  EXPECT_LE(max_relative_error(x.grad(), rx.grad()), tol) << "dx";
  EXPECT_LE(max_relative_error(delta.grad(), rd.grad()), tol) << "d delta";
  EXPECT_LE(max_relative_error(w.grad(), rw.grad()), tol) << "dw";
}

// Loss sum and d loss / d logits against torch's cross_entropy on fp32 logits, with ignored targets, a row
// width that takes the 16-byte path (V = 104) or not (V = 101), and the gradient written over the logits.
inline void check_fused_cross_entropy(torch::Device device, torch::ScalarType dtype, double tol, int64_t V,
                                      bool overwrite) {
  const int64_t N = 37;
  auto base = (torch::randn({N, V}, fused_opts(device, torch::kFloat32)) * 4).to(dtype).requires_grad_(true);
  auto targets = torch::randint(0, V, {N}, torch::TensorOptions().dtype(torch::kInt64).device(device));
  targets.index_put_({torch::indexing::Slice(0, N, 5)}, kIgnoreIndex);
  auto logits = base * 1.0;  // not a leaf: the overwrite lands in this product's output, not in base
  auto loss = fused_cross_entropy_sum(logits, targets, overwrite);
  EXPECT_EQ(loss.scalar_type(), torch::kFloat32);
  (loss * 0.5).backward();

  auto ref_in = base.detach().to(torch::kFloat32).requires_grad_(true);
  auto ref = torch::nn::functional::cross_entropy(
      ref_in, targets, torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex).reduction(torch::kSum));
  (ref * 0.5).backward();
  EXPECT_LE(max_relative_error(loss, ref), tol) << "loss";
  EXPECT_LE(max_relative_error(base.grad(), ref_in.grad()), tol) << "d logits";
}

// linear_cross_entropy in blocks with the fused kernels vs the full fp32 logits, loss and both gradients.
inline void check_fused_linear_cross_entropy(torch::Device device, torch::ScalarType dtype, double tol) {
  auto f32 = fused_opts(device, torch::kFloat32);
  auto h = torch::randn({37, 16}, f32).to(dtype).requires_grad_(true);
  auto w = torch::randn({104, 16}, f32).to(dtype).requires_grad_(true);
  auto t = torch::randint(0, 104, {37}, f32.dtype(torch::kInt64));
  t.index_put_({torch::indexing::Slice(3, 9)}, kIgnoreIndex);
  auto rh = h.detach().to(torch::kFloat32).requires_grad_(true), rw = w.detach().to(torch::kFloat32).requires_grad_(true);
  auto ref = linear_cross_entropy_reference(rh, rw, t);
  (ref * 1.7).backward();
  for (int64_t chunk : {1, 5, 37}) {
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    auto loss = linear_cross_entropy(h, w, t, chunk, /*fused=*/true);
    auto grads = torch::autograd::grad({loss * 1.7}, {h, w});
    EXPECT_LE(max_relative_error(loss, ref), tol) << "loss";
    // dh and dw are bf16 matrix products of the gradient: compared as wholes (norm), since single entries
    // may round ~1 % apart.
    EXPECT_LE(norm_relative_error(grads[0], rh.grad()), tol) << "dh";
    EXPECT_LE(norm_relative_error(grads[1], rw.grad()), tol) << "dw";
  }
}

// The small Llama these checks train (2 layers, d 64, GQA 4:2, FFN 96, vocabulary 96), on DEVICE, seeded.
inline std::shared_ptr<Llama> small_llama(torch::Device device, uint64_t seed) {
  ModelConfig c;
  c.vocab_size = 96, c.d_model = 64, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.d_ff = 96, c.max_seq_len = 32;
  torch::manual_seed(seed);
  auto model = std::make_shared<Llama>(c);
  model->to(device);
  return model;
}

// A small Llama with fused_kernels on (SwiGLU product kept, or recomputed in the backward pass) and off, one
// row holding two documents: the same loss and parameter gradients (bf16: under autocast).
inline void check_fused_llama(torch::Device device, bool bf16, double loss_tol, double grad_tol, int64_t loss_chunk = 0) {
  auto model = small_llama(device, 3);
  const ModelConfig& c = model->config();
  model->loss_chunk_rows = loss_chunk;
  Batch b;
  auto iopts = torch::TensorOptions().dtype(torch::kInt64).device(device);
  b.tokens = torch::randint(0, c.vocab_size, {2, 16}, iopts);
  b.targets = torch::randint(0, c.vocab_size, {2, 16}, iopts);
  b.targets.index_put_({0, torch::indexing::Slice(0, 3)}, kIgnoreIndex);
  b.positions = torch::arange(16, iopts).unsqueeze(0).expand({2, 16}).clone();
  // Row 1 packs two documents (positions restart, attention stays inside each): on CUDA in bf16 the fused
  // path takes flash attention's variable-length kernel, the unfused one an explicit mask.
  b.segments = torch::zeros({2, 16}, iopts.dtype(torch::kInt32));
  b.segments.index_put_({1, torch::indexing::Slice(9, 16)}, 1);
  b.positions.index_put_({1, torch::indexing::Slice(9, 16)}, torch::arange(7, iopts));
  b.has_segments = true;
  auto run = [&](bool fused, bool recompute = false) {
    model->fused_kernels = fused;
    model->recompute_swiglu = recompute;
    model->zero_grad();
    torch::Tensor loss;
    {
      AutocastScope autocast(device, bf16 ? "bf16" : "fp32");
      loss = model->loss_sum(b);
    }
    loss.backward();
    std::vector<torch::Tensor> grads;
    for (auto& p : model->parameters()) grads.push_back(p.grad().clone());
    return std::make_pair(loss.detach(), grads);
  };
  auto [ref_loss, ref_grads] = run(false);
  for (bool recompute : {false, true}) {
    SCOPED_TRACE(recompute ? "SwiGLU recomputed" : "SwiGLU kept");
    auto [loss, grads] = run(true, recompute);
    EXPECT_LE(max_relative_error(loss, ref_loss), loss_tol) << "loss";
    for (size_t i = 0; i < grads.size(); ++i)
      EXPECT_LE(norm_relative_error(grads[i], ref_grads[i]), grad_tol) << "gradient of parameter " << i;
  }
}

// Training a small Llama under bf16 autocast with the multi-tensor AdamW (the CUDA kernel, or its CPU loop) for
// a few steps, with the kept bf16 weight copies (models/weight_copies.h) on and off, once with a weight changed
// in place between steps: the same losses and weights (bit for bit where BITWISE: the CPU's products are
// deterministic), the copies read in every product after the first step (and after the change, except the
// changed weight's product), and each copy equal to the cast of its weight at the end.
struct CopiesRun {
  std::vector<float> losses;
  std::vector<torch::Tensor> weights;
  WeightCopyStats stats;
};
inline CopiesRun train_with_copies(torch::Device device, bool copies, bool change_a_weight) {
  set_weight_copies(copies);
  clear_weight_copies();
  const WeightCopyStats before = weight_copy_stats();
  auto model = small_llama(device, 5);
  const ModelConfig& c = model->config();
  model->fused_kernels = true;
  std::vector<std::pair<std::string, torch::Tensor>> params;
  std::vector<bool> decay;
  for (auto& item : model->named_parameters())
    params.emplace_back(item.key(), item.value()), decay.push_back(item.value().dim() == 2);
  AdamW opt(params, decay, {0.9, 0.95, 1e-8, 0.1, /*fused=*/true});
  Batch b;
  auto iopts = torch::TensorOptions().dtype(torch::kInt64).device(device);
  b.tokens = torch::randint(0, c.vocab_size, {2, 16}, iopts);
  b.targets = torch::randint(0, c.vocab_size, {2, 16}, iopts);
  b.positions = torch::arange(16, iopts).unsqueeze(0).expand({2, 16}).clone();
  CopiesRun out;
  for (int step = 0; step < 4; ++step) {
    if (change_a_weight && step == 2) {  // changed in place between steps: its copy must not be read
      torch::NoGradGuard ng;
      model->named_parameters()["model.layers.0.self_attn.k_proj.weight"].mul_(0.5);
    }
    opt.zero_grad();
    torch::Tensor loss;
    {
      AutocastScope autocast(device, "bf16");
      loss = model->loss_sum(b) / double(b.tokens.numel());
    }
    loss.backward();
    opt.step(1e-2);
    out.losses.push_back(loss.item<float>());
  }
  for (auto& p : model->parameters()) out.weights.push_back(p.detach().cpu());
  if (copies)
    for (auto& item : model->named_parameters()) {
      auto copy = registered_copy(item.value());
      if (copy.defined()) {
        EXPECT_TRUE(torch::equal(copy, item.value().to(torch::kBFloat16))) << item.key() << "'s copy is stale";
      }
    }
  const WeightCopyStats after = weight_copy_stats();
  out.stats = {after.reused - before.reused, after.cast - before.cast};
  set_weight_copies(true);
  clear_weight_copies();
  return out;
}

inline void check_weight_copies(torch::Device device, bool bitwise) {
  for (bool change : {false, true}) {
    SCOPED_TRACE(change ? "a weight changed in place after step 2" : "weights changed by the optimizer only");
    const CopiesRun kept = train_with_copies(device, true, change), cast = train_with_copies(device, false, change);
    ASSERT_EQ(kept.losses.size(), cast.losses.size());
    for (size_t i = 0; i < kept.losses.size(); ++i) {
      const double tol = bitwise ? 0.0 : 1e-3 * std::abs(cast.losses[i]);
      EXPECT_NEAR(kept.losses[i], cast.losses[i], tol) << "step " << i + 1;
    }
    for (size_t i = 0; i < kept.weights.size(); ++i) {
      const double err = max_relative_error(kept.weights[i], cast.weights[i]);
      EXPECT_LE(err, bitwise ? 0.0 : 1e-2) << "weight " << i;
    }
    // 2 layers x (q/k/v, o, gate/up, down) + the LM head = 9 products a step, the first step casting all.
    EXPECT_EQ(kept.stats.cast, change ? 10 : 9);
    EXPECT_EQ(kept.stats.reused, change ? 26 : 27);
    EXPECT_EQ(cast.stats.reused + cast.stats.cast, 0);
  }
}

}  // namespace cw::test
