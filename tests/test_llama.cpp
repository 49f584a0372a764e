// The Llama decoder: one layer against a hand-written loop reference, Hugging Face parameter names,
// RoPE properties, and autograd gradients against finite differences in fp64.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <set>

#include "models/llama.h"
#include "models/linear_cross_entropy.h"
#include "train/step_strategy.h"

using namespace cw;
using torch::indexing::Slice;

static ModelConfig tiny(int64_t vocab = 11) {
  ModelConfig c;
  c.vocab_size = vocab, c.d_model = 16, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.d_ff = 24;
  c.max_seq_len = 32;
  return c;
}

// Loop reference of one decoder layer in double precision, written from the formulas.
static torch::Tensor reference_layer(LlamaDecoderLayerImpl& L, const torch::Tensor& x, const ModelConfig& c) {
  const int64_t T = x.size(1), D = c.d_model, H = c.n_heads, Hkv = c.n_kv_heads, hd = c.head_dim();
  auto rms = [&](const torch::Tensor& v, const torch::Tensor& w) {
    auto out = torch::zeros_like(v);
    for (int64_t t = 0; t < T; ++t) {
      double ss = 0;
      for (int64_t i = 0; i < D; ++i) ss += std::pow(v[0][t][i].item<double>(), 2);
      double inv = 1.0 / std::sqrt(ss / double(D) + c.norm_eps);
      for (int64_t i = 0; i < D; ++i) out[0][t][i] = v[0][t][i].item<double>() * inv * w[i].item<double>();
    }
    return out;
  };
  auto matvec = [](const torch::Tensor& W, const torch::Tensor& v) {  // v [T, in] -> [T, out]
    auto out = torch::zeros({v.size(0), W.size(0)}, torch::kFloat64);
    for (int64_t t = 0; t < v.size(0); ++t)
      for (int64_t o = 0; o < W.size(0); ++o) {
        double s = 0;
        for (int64_t i = 0; i < W.size(1); ++i) s += W[o][i].item<double>() * v[t][i].item<double>();
        out[t][o] = s;
      }
    return out;
  };
  auto rope = [&](torch::Tensor v, int64_t heads) {  // v [T, heads*hd], rotate-half pairs (i, i + hd/2)
    auto out = v.clone();
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < hd / 2; ++i) {
          double freq = std::pow(c.rope_theta, -2.0 * double(i) / double(hd)), a = double(t) * freq;
          double x1 = v[t][h * hd + i].item<double>(), x2 = v[t][h * hd + i + hd / 2].item<double>();
          out[t][h * hd + i] = x1 * std::cos(a) - x2 * std::sin(a);
          out[t][h * hd + i + hd / 2] = x2 * std::cos(a) + x1 * std::sin(a);
        }
    return out;
  };
  auto xn = rms(x, L.input_layernorm->weight)[0];
  auto q = rope(matvec(L.self_attn->q_proj->weight, xn), H);
  auto k = rope(matvec(L.self_attn->k_proj->weight, xn), Hkv);
  auto v = matvec(L.self_attn->v_proj->weight, xn);
  auto att = torch::zeros({T, H * hd}, torch::kFloat64);
  for (int64_t h = 0; h < H; ++h) {
    int64_t g = h / (H / Hkv);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> s(size_t(t + 1));
      double mx = -1e300, z = 0;
      for (int64_t u = 0; u <= t; ++u) {
        double dot = 0;
        for (int64_t i = 0; i < hd; ++i) dot += q[t][h * hd + i].item<double>() * k[u][g * hd + i].item<double>();
        s[size_t(u)] = dot / std::sqrt(double(hd));
        mx = std::max(mx, s[size_t(u)]);
      }
      for (auto& e : s) z += (e = std::exp(e - mx));
      for (int64_t i = 0; i < hd; ++i) {
        double acc = 0;
        for (int64_t u = 0; u <= t; ++u) acc += s[size_t(u)] / z * v[u][g * hd + i].item<double>();
        att[t][h * hd + i] = acc;
      }
    }
  }
  auto h1 = x[0] + matvec(L.self_attn->o_proj->weight, att);
  auto hn = rms(h1.unsqueeze(0), L.post_attention_layernorm->weight)[0];
  auto gate = matvec(L.mlp->gate_proj->weight, hn), up = matvec(L.mlp->up_proj->weight, hn);
  auto act = gate / (1 + torch::exp(-gate)) * up;
  return (h1 + matvec(L.mlp->down_proj->weight, act)).unsqueeze(0);
}

TEST(Llama, DecoderLayerMatchesHandWrittenReference) {
  torch::manual_seed(3);
  ModelConfig c = tiny();
  LlamaDecoderLayer layer(c);
  layer->to(torch::kFloat64);
  {
    torch::NoGradGuard ng;
    for (auto& p : layer->parameters()) p.normal_(0, 0.3);
  }
  auto x = torch::randn({1, 6, c.d_model}, torch::kFloat64);
  auto pos = torch::arange(6, torch::kInt64).unsqueeze(0);
  auto [cos, sin] = rope_tables(pos, c.head_dim(), c.rope_theta);
  AttnMask m;
  m.q_offset = 0;
  auto y = layer->forward(x, cos.to(torch::kFloat64), sin.to(torch::kFloat64), m);
  auto ref = reference_layer(*layer, x, c);
  double err = (y - ref).abs().max().item<double>();
  EXPECT_LT(err, 1e-6 * std::max(1.0, ref.abs().max().item<double>())) << err;  // fp32 rope tables bound it
}

TEST(Llama, ParameterNamesAreHuggingFaces) {
  ModelConfig c = tiny();
  std::set<std::string> names;
  for (auto& p : Llama(c).named_parameters()) names.insert(p.key());
  std::set<std::string> expect = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"};
  for (int i = 0; i < 2; ++i) {
    std::string l = "model.layers." + std::to_string(i) + ".";
    for (auto s : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                   "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm"})
      expect.insert(l + s + ".weight");
  }
  EXPECT_EQ(names, expect);
  c.tie_embeddings = true;
  Llama tied(c);
  EXPECT_FALSE(tied.named_parameters().contains("lm_head.weight"));
  int64_t count = 0;
  for (auto& p : Llama(tiny()).parameters()) count += p.numel();
  EXPECT_EQ(count, tiny().non_embedding_params() + tiny().embedding_params());
}

TEST(Llama, RopeDependsOnlyOnRelativePosition) {
  auto q = torch::randn({1, 1, 1, 8}), k = torch::randn({1, 1, 1, 8});
  auto score = [&](int64_t pq, int64_t pk) {
    auto [cq, sq] = rope_tables(torch::full({1, 1}, pq, torch::kInt64), 8, 10000);
    auto [ck, sk] = rope_tables(torch::full({1, 1}, pk, torch::kInt64), 8, 10000);
    return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum().item<double>();
  };
  EXPECT_NEAR(score(5, 2), score(105, 102), 1e-4);
  auto [c0, s0] = rope_tables(torch::zeros({1, 1}, torch::kInt64), 8, 10000);
  EXPECT_TRUE(torch::allclose(apply_rope(q, c0, s0), q));
}

TEST(Llama, GradientsMatchFiniteDifferences) {
  torch::manual_seed(5);
  ModelConfig c = tiny();
  c.tie_embeddings = true;
  Llama model(c);
  model.to(torch::kFloat64);
  Batch b;
  b.tokens = torch::randint(0, c.vocab_size, {2, 6}, torch::kInt64);
  b.targets = torch::randint(0, c.vocab_size, {2, 6}, torch::kInt64);
  b.targets[0][2] = kIgnoreIndex;  // ignored targets contribute nothing
  b.positions = torch::arange(6, torch::kInt64).unsqueeze(0).repeat({2, 1});
  b.n_target_tokens = 11;
  model.loss_sum(b).backward();
  torch::NoGradGuard ng;
  int checked = 0;
  for (auto& p : model.named_parameters()) {
    auto flat = p.value().view({-1});
    auto grad = p.value().grad().view({-1});
    for (int j = 0; j < 3; ++j) {
      int64_t i = (j * 7919 + 13) % flat.numel();
      double old = flat[i].item<double>(), h = 1e-6;
      flat[i] = old + h;
      double up = model.loss_sum(b).item<double>();
      flat[i] = old - h;
      double down = model.loss_sum(b).item<double>();
      flat[i] = old;
      double fd = (up - down) / (2 * h), ad = grad[i].item<double>();
      EXPECT_NEAR(ad, fd, 1e-6 * std::max(1.0, std::abs(fd))) << p.key() << "[" << i << "]";
      ++checked;
    }
  }
  EXPECT_GT(checked, 40);
}

TEST(StepStrategy, AccumulatedMicroBatchesGiveTheFullBatchGradient) {
  torch::manual_seed(9);
  ModelConfig c = tiny();
  Llama model(c);
  model.to(torch::kFloat64);
  auto make = [&](int64_t rows) {
    Batch b;
    b.tokens = torch::randint(0, c.vocab_size, {rows, 8}, torch::kInt64);
    b.targets = torch::randint(0, c.vocab_size, {rows, 8}, torch::kInt64);
    b.targets.index_put_({0, Slice(0, 3)}, kIgnoreIndex);
    b.positions = torch::arange(8, torch::kInt64).unsqueeze(0).repeat({rows, 1});
    b.n_target_tokens = (b.targets != kIgnoreIndex).sum().item<int64_t>();
    return b;
  };
  Batch a = make(2), b = make(3);
  Batch whole;
  whole.tokens = torch::cat({a.tokens, b.tokens});
  whole.targets = torch::cat({a.targets, b.targets});
  whole.positions = torch::cat({a.positions, b.positions});
  whole.n_target_tokens = a.n_target_tokens + b.n_target_tokens;
  StandardStep step;
  double loss_whole = step.run(model, {whole}).loss;
  std::vector<torch::Tensor> g_whole;
  for (auto& p : model.parameters()) g_whole.push_back(p.grad().clone()), p.mutable_grad() = torch::Tensor();
  double loss_acc = step.run(model, {a, b}).loss;
  EXPECT_NEAR(loss_acc, loss_whole, 1e-12);
  size_t i = 0;
  for (auto& p : model.parameters()) EXPECT_TRUE(torch::allclose(p.grad(), g_whole[i++], 1e-10, 1e-12));
}

TEST(Llama, CudaRmsNormMatchesTheReference) {  // the fused ATen kernel used on CUDA vs the CPU formula
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(8);
  RMSNorm cpu(64, 1e-5), gpu(64, 1e-5);
  {
    torch::NoGradGuard ng;
    cpu->weight.normal_(1.0, 0.2);
    gpu->weight.copy_(cpu->weight);
  }
  gpu->to(torch::kCUDA);
  auto x = torch::randn({4, 7, 64}, torch::requires_grad());
  auto xg = x.detach().to(torch::kCUDA).requires_grad_();
  auto y = cpu->forward(x), yg = gpu->forward(xg);
  auto dy = torch::randn_like(y);
  y.backward(dy);
  yg.backward(dy.to(torch::kCUDA));
  EXPECT_TRUE(torch::allclose(yg.cpu(), y, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(xg.grad().cpu(), x.grad(), 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(gpu->weight.grad().cpu(), cpu->weight.grad(), 1e-4, 1e-4));
}

TEST(LinearCrossEntropy, ChunkedLossAndGradientsEqualTheFullLogits) {
  torch::manual_seed(12);
  auto h = torch::randn({37, 16}, torch::kFloat64).requires_grad_();
  auto w = torch::randn({50, 16}, torch::kFloat64).requires_grad_();
  auto t = torch::randint(0, 50, {37}, torch::kInt64);
  t.index_put_({torch::indexing::Slice(3, 9)}, kIgnoreIndex);
  auto ref = linear_cross_entropy_reference(h, w, t);
  auto [gh_ref, gw_ref] = std::make_tuple(torch::autograd::grad({ref}, {h})[0], torch::autograd::grad({linear_cross_entropy_reference(h, w, t)}, {w})[0]);
  for (int64_t chunk : {1, 5, 16, 37, 100}) {
    auto loss = linear_cross_entropy(h, w, t, chunk);
    EXPECT_NEAR(loss.item<double>(), ref.item<double>(), 1e-10) << chunk;
    auto grads = torch::autograd::grad({loss * 1.7}, {h, w});
    EXPECT_TRUE(torch::allclose(grads[0], gh_ref * 1.7, 1e-10, 1e-12)) << chunk;
    EXPECT_TRUE(torch::allclose(grads[1], gw_ref * 1.7, 1e-10, 1e-12)) << chunk;
  }
  // Through the model: the chunked path gives the same loss and gradients as the full logits.
  ModelConfig c = tiny();
  Llama model(c);
  model.to(torch::kFloat64);
  Batch b;
  b.tokens = torch::randint(0, c.vocab_size, {2, 9}, torch::kInt64);
  b.targets = torch::randint(0, c.vocab_size, {2, 9}, torch::kInt64);
  b.positions = torch::arange(9, torch::kInt64).unsqueeze(0).repeat({2, 1});
  auto full = model.loss_sum(b);
  auto g_full = torch::autograd::grad({full}, {model.named_parameters()["model.layers.0.mlp.up_proj.weight"]})[0];
  model.loss_chunk_rows = 4;
  auto chunked = model.loss_sum(b);
  auto g_chunked = torch::autograd::grad({chunked}, {model.named_parameters()["model.layers.0.mlp.up_proj.weight"]})[0];
  EXPECT_NEAR(chunked.item<double>(), full.item<double>(), 1e-10);
  EXPECT_TRUE(torch::allclose(g_chunked, g_full, 1e-9, 1e-12));
}
