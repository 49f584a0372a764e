// RAT (models/rat.h) against the spec's checks: the parallel form equals the naive T x T masked-softmax
// reference (values and gradients, ragged chunks); one token at a time through the decode cache equals the
// parallel form; one chunk (L >= T) is the gated recurrence alone; chunks of one token with open gates are
// causal attention with RoPE; the family trains through the trainer; packed documents and a recipe of another
// family starting from its weights are refused.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sstream>

#include "models/model_config.h"
#include "models/rat.h"
#include "tests/test_util.h"
#include "train/trainer.h"

using namespace cw;
using namespace cw::test;

namespace {

RatInputs random_inputs(int64_t B, int64_t T, int64_t H, int64_t dh, bool grad) {
  auto o = torch::TensorOptions().dtype(torch::kFloat64).requires_grad(grad);
  RatInputs in;
  in.q = torch::randn({B, T, H, dh}, o), in.k = torch::randn({B, T, H, dh}, o), in.v = torch::randn({B, T, H, dh}, o);
  in.g = torch::sigmoid(torch::randn({B, T, H, dh}, torch::kFloat64)).detach().requires_grad_(grad);
  return in;
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

ModelConfig rat_config(int64_t L) {
  ModelConfig c;
  c.family = "rat", c.vocab_size = 11, c.d_model = 16, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4, c.d_ff = 24;
  c.rat_chunk = L, c.rat_groups = 2, c.max_seq_len = 64;
  return c;
}

}  // namespace

TEST(Rat, ParallelFormEqualsTheNaiveReferenceWithGradients) {
  torch::manual_seed(1);
  for (int64_t L : {1, 4, 5, 40}) {  // 37 tokens: ragged last chunk; 40: one chunk
    SCOPED_TRACE("L = " + std::to_string(L));
    RatInputs in = random_inputs(2, 37, 4, 8, true);
    auto w = torch::randn({2, 37, 32}, torch::kFloat64);
    auto fast = rat_mix(in, L, 10000.0), ref = rat_mix_reference(in, L, 10000.0);
    EXPECT_LT(max_diff(fast, ref), 1e-12);
    std::vector<torch::Tensor> leaves = {in.q, in.k, in.v, in.g};
    // In one chunk the queries meet no earlier state: the parallel form does not use them (zero gradient).
    auto g_fast = torch::autograd::grad({(fast * w).sum()}, leaves, {}, std::nullopt, false, /*allow_unused=*/true);
    auto g_ref = torch::autograd::grad({(ref * w).sum()}, leaves);
    for (size_t i = 0; i < leaves.size(); ++i) {
      auto got = g_fast[i].defined() ? g_fast[i] : torch::zeros_like(g_ref[i]);
      EXPECT_LT(max_diff(got, g_ref[i]), 1e-11) << "input " << i;
    }
  }
}

TEST(Rat, OneChunkIsTheGatedRecurrenceAlone) {
  torch::manual_seed(2);
  RatInputs in = random_inputs(1, 9, 2, 4, false);
  auto y = rat_mix(in, 16, 10000.0);  // every token in chunk 0: y = its running v state
  torch::Tensor s;
  for (int64_t t = 0; t < 9; ++t) {
    auto g = in.g.select(1, t), v = in.v.select(1, t);
    s = t == 0 ? (1 - g) * v : g * s + (1 - g) * v;
    EXPECT_LT(max_diff(y.select(1, t), s.reshape({1, 8})), 1e-14) << t;
  }
}

TEST(Rat, ChunksOfOneWithOpenGatesAreCausalAttentionWithRope) {
  torch::manual_seed(3);
  RatInputs in = random_inputs(2, 12, 4, 8, false);
  in.g = torch::zeros_like(in.g);  // k~ = k, v~ = v
  auto y = rat_mix(in, 1, 500.0);
  auto pos = torch::arange(12, torch::kInt64).unsqueeze(0).expand({2, 12});
  auto [cos, sin] = rope_tables(pos, 8, 500.0);
  auto q = apply_rope(in.q.transpose(1, 2), cos, sin), k = apply_rope(in.k.transpose(1, 2), cos, sin);
  auto want = at::scaled_dot_product_attention(q, k, in.v.transpose(1, 2), {}, 0.0, /*is_causal=*/true);
  EXPECT_LT(max_diff(y, want.transpose(1, 2).reshape({2, 12, 32})), 1e-12);
}

TEST(Rat, DecodingOneTokenAtATimeEqualsTheParallelForm) {
  torch::manual_seed(4);
  Rat model(rat_config(3));
  model.to(torch::kFloat64);
  auto tokens = torch::randint(0, 11, {2, 10}, torch::kInt64);
  torch::NoGradGuard ng;
  auto all = model.logits(tokens, torch::Tensor(), torch::Tensor());
  std::vector<RatState> states;
  for (int64_t t = 0; t < 10; ++t)
    EXPECT_LT(max_diff(model.step_logits(tokens.select(1, t), states), all.select(1, t)), 1e-12) << "token " << t;
  ASSERT_EQ(states.size(), 2u);
  EXPECT_EQ(states[0].final_k.size(), 3u);  // one slot per finished chunk: L x smaller than a KV cache
}

TEST(Rat, GenerationThroughTheDecodeStateEqualsReRunningTheContext) {
  torch::manual_seed(5);
  Rat model(rat_config(3));
  expect_decode_state_samples_as_rerun(model);
}

// The hybrid decodes through RAT states and, in its attention layers, the last rat_window keys and values: token by
// token it equals the parallel form past the window (grouped key/value heads), and generation equals re-running.
TEST(Rat, HybridDecodingOneTokenAtATimeEqualsTheParallelForm) {
  torch::manual_seed(9);
  ModelConfig c = rat_config(3);
  c.rat_attention_every = 2, c.rat_window = 4, c.n_kv_heads = 2;  // layer 0 RAT, layer 1 local attention
  Rat model(c);
  model.to(torch::kFloat64);
  {
    torch::NoGradGuard ng;
    auto tokens = torch::randint(0, 11, {2, 11}, torch::kInt64);
    auto all = model.logits(tokens, torch::Tensor(), torch::Tensor());
    std::vector<RatState> states;
    for (int64_t t = 0; t < 11; ++t)
      EXPECT_LT(max_diff(model.step_logits(tokens.select(1, t), states), all.select(1, t)), 1e-12) << "token " << t;
    EXPECT_EQ(states[1].window_k.size(2), 4);  // the attention layer keeps its window, not the sequence
  }
  model.to(torch::kFloat32);
  expect_decode_state_samples_as_rerun(model);
}

// The hybrid's attention layers see rat_window tokens: with one layer, an attention layer, a token's logits move
// when a token 3 back changes and not when one 4 back does (window 4), nor when a later one does.
TEST(Rat, HybridAttentionLayersSeeTheirWindowOnly) {
  torch::manual_seed(6);
  ModelConfig c = rat_config(4);
  c.rat_attention_every = 1, c.rat_window = 4, c.n_layers = 1;
  Rat model(c);
  model.to(torch::kFloat64);
  EXPECT_NE(model.named_modules("", false).find("layers.0.self_attn"), nullptr);
  torch::NoGradGuard ng;
  auto tokens = torch::randint(0, 11, {1, 12}, torch::kInt64);
  auto base = model.logits(tokens, torch::Tensor(), torch::Tensor()).select(1, 10);
  auto moved = [&](int64_t at) {
    auto t = tokens.clone();
    t[0][at] = (t[0][at].item<int64_t>() + 1) % 11;
    return max_diff(model.logits(t, torch::Tensor(), torch::Tensor()).select(1, 10), base);
  };
  EXPECT_GT(moved(7), 1e-6);   // 3 back: inside the window
  EXPECT_EQ(moved(6), 0.0);    // 4 back: outside it
  EXPECT_EQ(moved(11), 0.0);   // the future
  c.rat_attention_every = 2, c.n_layers = 2;  // layer 0 RAT, layer 1 local attention
  Rat hybrid(c);
  EXPECT_NE(hybrid.named_modules("", false).find("layers.1.self_attn"), nullptr);
  EXPECT_NE(hybrid.named_modules("", false).find("layers.0.in_proj"), nullptr);
  int64_t n = 0;
  for (auto& p : hybrid.parameters()) n += p.numel();
  EXPECT_EQ(n, c.non_embedding_params() + c.embedding_params());
  ModelConfig back = ModelConfig::from_json(c.to_json());
  EXPECT_EQ(back.rat_attention_every, 2);
  EXPECT_EQ(back.rat_window, 4);
}

TEST(Rat, ConfigRoundTripsAndBadSettingsAreRefused) {
  ModelConfig c = rat_config(8);
  c.rat_groups = 4;
  ModelConfig back = ModelConfig::from_json(c.to_json());
  EXPECT_EQ(back.family, "rat");
  EXPECT_EQ(back.rat_chunk, 8);
  EXPECT_EQ(back.rat_groups, 4);
  c.rat_groups = 5;
  EXPECT_NE(user_error_of([&] { c.validate(); }).find("rat_groups"), std::string::npos);
  c.rat_groups = 2, c.lora_rank = 4, c.lora_targets = {"q_proj"};
  EXPECT_NE(user_error_of([&] { c.validate(); }).find("llama family only"), std::string::npos);
  Rat model(rat_config(4));
  int64_t n = 0;
  for (auto& p : model.parameters()) n += p.numel();
  EXPECT_EQ(n, rat_config(4).non_embedding_params() + rat_config(4).embedding_params());
}

TEST(Training, RatFamilyTrainsAndRefusesPackedDocuments) {
  auto out = scratch_dir("train-rat");
  Recipe r = tiny_recipe(out, "rat", 60);
  r.set("model.family", "rat");
  r.set("model.rat_chunk", "8");
  TrainResult res = expect_trains(r);
  std::ostringstream log;
  TrainOptions o;
  o.out = &log;
  // Starting a llama recipe from the RAT run's weights names the disagreeing family.
  Recipe from = tiny_recipe(out, "from-rat", 2);
  from.set("model.family", "llama");
  from.set("init.from", res.run_dir.string());
  EXPECT_NE(user_error_of([&] { train(from, o); }).find("model.family = llama in the recipe, rat in"),
            std::string::npos);
  Recipe hybrid = tiny_recipe(out, "rat-hybrid", 60);  // RAT and 8-token sliding-window layers in turn
  hybrid.set("model.family", "rat");
  hybrid.set("model.rat_chunk", "8");
  hybrid.set("model.rat_attention_every", "2");
  hybrid.set("model.rat_window", "8");
  expect_trains(hybrid);
  Recipe packed = tiny_recipe(out, "rat-packed", 2);
  packed.set("model.family", "rat");
  packed.set("data.strategy", "bestfit");
  EXPECT_NE(user_error_of([&] { train(packed, o); }).find("strategy = concat"), std::string::npos);
}
