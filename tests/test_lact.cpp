// LaCT (models/lact.h) against the spec's checks: the closed-form update equals autograd of the inner loss
// (fp64); chunk 0 is the initial weights applied, and one chunk covering the sequence means no update; the
// rows keep their starting norms after every update (momentum and Muon on); no output moves when later tokens
// change (t = C-1, C, T-1), while the fast weights carry a token beyond the window; one token at a time through
// the decode cache equals the parallel form (T not a multiple of C); generation through that cache equals
// re-running the context; the config round-trips and bad settings are refused; the family trains.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sstream>

#include "models/lact.h"
#include "models/model_config.h"
#include "tests/test_util.h"
#include "train/trainer.h"

using namespace cw;
using namespace cw::test;

namespace {

double max_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

torch::TensorOptions f64() { return torch::TensorOptions().dtype(torch::kFloat64); }

FastWeights random_weights(int64_t B, int64_t Hf, int64_t dh, int64_t d) {
  return {torch::randn({B, Hf, dh, d}, f64()) / 2, torch::randn({B, Hf, d, dh}, f64()) / 2,
          torch::randn({B, Hf, dh, d}, f64()) / 2};
}

LactInputs random_inputs(int64_t B, int64_t Hf, int64_t T, int64_t d, bool momentum) {
  LactInputs in;
  in.q = torch::randn({B, Hf, T, d}, f64()), in.k = torch::randn({B, Hf, T, d}, f64());
  in.v = torch::randn({B, Hf, T, d}, f64());
  in.lr0 = torch::rand({B, Hf, T}, f64()) / 10, in.lr1 = torch::rand({B, Hf, T}, f64()) / 10;
  in.lr2 = torch::rand({B, Hf, T}, f64()) / 10;
  if (momentum) in.momentum = torch::rand({B, Hf, T}, f64());
  return in;
}

ModelConfig lact_config(int64_t C, int64_t W) {
  ModelConfig c;
  c.family = "lact", c.vocab_size = 11, c.d_model = 16, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4, c.d_ff = 24;
  c.lact_chunk = C, c.lact_window = W, c.lact_heads = 2, c.max_seq_len = 64;
  return c;
}

}  // namespace

TEST(Lact, ClosedFormUpdateEqualsAutogradOfTheInnerLoss) {
  torch::manual_seed(1);
  FastWeights w = random_weights(2, 3, 10, 4);  // d_h 10 > d 4: the shapes are not interchangeable
  LactInputs in = random_inputs(2, 3, 7, 4, false);
  FastWeights delta = lact_delta(w, in.k, in.v, in.lr0, in.lr1, in.lr2);
  // L_j = -sum_i lr_j,i f_W(k_i)^T v_i, differentiated with respect to W_j alone.
  const std::vector<torch::Tensor> rates = {in.lr0, in.lr1, in.lr2};
  const std::vector<torch::Tensor> got = {delta.w0, delta.w1, delta.w2};
  for (int j = 0; j < 3; ++j) {
    SCOPED_TRACE("w" + std::to_string(j));
    FastWeights leaf = {w.w0.clone().requires_grad_(), w.w1.clone().requires_grad_(), w.w2.clone().requires_grad_()};
    auto f = lact_apply(leaf, in.k);                          // [B, Hf, n, d]
    auto loss = -((f * in.v).sum(-1) * rates[size_t(j)]).sum();
    const torch::Tensor& target = j == 0 ? leaf.w0 : j == 1 ? leaf.w1 : leaf.w2;
    auto g = torch::autograd::grad({loss}, {target})[0];
    EXPECT_LT(max_diff(got[size_t(j)], -g), 1e-12);
    EXPECT_GT(g.abs().max().item<double>(), 1e-3);  // not trivially zero
  }
}

TEST(Lact, ChunkZeroAppliesTheInitialWeightsAndOneChunkNeverUpdates) {
  torch::manual_seed(2);
  FastWeights w = random_weights(1, 2, 8, 4);
  LactInputs in = random_inputs(3, 2, 13, 4, true);
  auto out = lact_fast_weight_forward(w, in, 5, false);
  EXPECT_LT(max_diff(out.narrow(2, 0, 5), lact_apply(w, in.q.narrow(2, 0, 5))), 1e-14);
  EXPECT_GT(max_diff(out.narrow(2, 5, 5), lact_apply(w, in.q.narrow(2, 5, 5))), 1e-4);  // chunk 1 sees an update
  for (int64_t C : {13, 20})  // C >= T: one chunk, applied only
    EXPECT_LT(max_diff(lact_fast_weight_forward(w, in, C, true), lact_apply(w, in.q)), 1e-14) << "C = " << C;
}

TEST(Lact, RowsKeepTheirStartingNormsAfterEveryUpdate) {
  torch::manual_seed(3);
  for (bool muon : {false, true}) {
    SCOPED_TRACE(muon ? "muon" : "plain");
    FastWeights w = random_weights(2, 2, 8, 4);
    FastWeightState s(w);
    LactInputs in = random_inputs(2, 2, 12, 4, true);
    for (int64_t c = 0; c < 3; ++c) {
      auto part = [&](const torch::Tensor& x) { return x.narrow(2, 4 * c, 4); };
      s.update(part(in.k), part(in.v), part(in.lr0), part(in.lr1), part(in.lr2), part(in.momentum), muon);
      const std::vector<std::pair<torch::Tensor, torch::Tensor>> pairs = {{s.w.w0, w.w0}, {s.w.w1, w.w1},
                                                                            {s.w.w2, w.w2}};
      for (const auto& [now, start] : pairs) {
        auto n = now.norm(2, -1), n0 = start.norm(2, -1);
        EXPECT_LT(((n - n0).abs() / n0).max().item<double>(), 1e-4) << "after chunk " << c;
      }
    }
    EXPECT_GT(max_diff(s.w.w1, w.w1), 1e-3);  // the weights did move
  }
}

TEST(Lact, MomentumCarriesTheLastUpdate) {
  torch::manual_seed(4);
  FastWeights w = random_weights(1, 2, 8, 4);
  LactInputs in = random_inputs(1, 2, 12, 4, true);
  auto run = [&](const torch::Tensor& m) {
    LactInputs x = in;
    x.momentum = m;
    return lact_fast_weight_forward(w, x, 4, false);
  };
  auto plain = run(torch::Tensor());
  EXPECT_LT(max_diff(run(torch::zeros_like(in.momentum)), plain), 1e-14);  // m = 0: no memory of the last step
  // Chunk 1 sees one update, which momentum cannot have changed yet; chunk 2 sees the carried one.
  auto with = run(in.momentum);
  EXPECT_LT(max_diff(with.narrow(2, 0, 8), plain.narrow(2, 0, 8)), 1e-14);
  EXPECT_GT(max_diff(with.narrow(2, 8, 4), plain.narrow(2, 8, 4)), 1e-5);
}

TEST(Lact, NewtonSchulzBringsSingularValuesNearOne) {
  torch::manual_seed(5);
  for (auto shape : {std::vector<int64_t>{3, 8, 5}, std::vector<int64_t>{3, 5, 8}}) {  // tall and wide
    auto x = torch::randn(shape, f64()) * 7;
    auto s = torch::linalg_svdvals(newton_schulz5(x));
    EXPECT_GT(s.min().item<double>(), 0.6);
    EXPECT_LT(s.max().item<double>(), 1.3);
    auto s_bf16 = torch::linalg_svdvals(newton_schulz5(x.to(torch::kFloat32)).to(torch::kFloat64));
    EXPECT_GT(s_bf16.min().item<double>(), 0.5);  // the bf16 path the model runs
    EXPECT_LT(s_bf16.max().item<double>(), 1.4);
  }
}

// With one layer, whose window is 4 tokens: logits at t never move when a later token changes, and a token
// 12 back still reaches the last position through the fast weights.
TEST(Lact, OutputsDependOnEarlierTokensOnlyAndFastWeightsReachPastTheWindow) {
  torch::manual_seed(6);
  ModelConfig c = lact_config(4, 4);
  c.n_layers = 1;
  Lact model(c);
  model.to(torch::kFloat64);
  torch::NoGradGuard ng;
  const int64_t T = 13;
  auto tokens = torch::randint(0, 11, {2, T}, torch::kInt64);
  auto base = model.logits(tokens, torch::Tensor(), torch::Tensor());
  auto changed_after = [&](int64_t t) {  // every token after t replaced
    auto x = tokens.clone();
    x.narrow(1, t + 1, T - t - 1).add_(1).remainder_(11);
    return model.logits(x, torch::Tensor(), torch::Tensor());
  };
  for (int64_t t : {3, 4}) {  // C - 1, C (at T - 1 nothing comes after; the last position is checked below)
    auto other = changed_after(t);
    EXPECT_LT(max_diff(other.narrow(1, 0, t + 1), base.narrow(1, 0, t + 1)), 1e-12) << "t = " << t;
    EXPECT_GT(max_diff(other.narrow(1, t + 1, 1), base.narrow(1, t + 1, 1)), 1e-6) << "t = " << t;
  }
  auto first = tokens.clone();
  first[0][0] = (first[0][0].item<int64_t>() + 1) % 11;
  auto moved = model.logits(first, torch::Tensor(), torch::Tensor());
  EXPECT_GT(max_diff(moved[0][T - 1], base[0][T - 1]), 1e-8);  // 12 back, 8 past the window
  EXPECT_LT(max_diff(moved[1], base[1]), 1e-14);              // the other row is its own sequence
}

TEST(Lact, DecodingOneTokenAtATimeEqualsTheParallelForm) {
  torch::manual_seed(7);
  ModelConfig c = lact_config(4, 6);
  c.lact_momentum = true, c.lact_muon = true, c.lact_low_rank = 2, c.lact_hidden_mult = 2;
  Lact model(c);
  model.to(torch::kFloat64);
  torch::NoGradGuard ng;
  auto tokens = torch::randint(0, 11, {2, 11}, torch::kInt64);  // 11 = 2 chunks of 4 and 3 tokens
  auto all = model.logits(tokens, torch::Tensor(), torch::Tensor());
  auto state = model.new_decode_state();
  ASSERT_NE(state, nullptr);
  for (int64_t t = 0; t < 11; ++t)
    EXPECT_LT(max_diff(model.decode_step(tokens.select(1, t), *state), all.select(1, t)), 1e-10) << "token " << t;
}

TEST(Lact, GenerationThroughTheDecodeStateEqualsReRunningTheContext) {
  torch::manual_seed(8);
  Lact model(lact_config(3, 4));
  expect_decode_state_samples_as_rerun(model);
}

TEST(Lact, ConfigRoundTripsAndBadSettingsAreRefused) {
  ModelConfig c = lact_config(8, 16);
  c.lact_momentum = true, c.lact_low_rank = 3, c.lact_hidden_mult = 2;
  ModelConfig back = ModelConfig::from_json(c.to_json());
  EXPECT_EQ(back.family, "lact");
  EXPECT_EQ(back.lact_chunk, 8);
  EXPECT_EQ(back.lact_window, 16);
  EXPECT_EQ(back.lact_low_rank, 3);
  EXPECT_EQ(back.lact_hidden_mult, 2);
  EXPECT_TRUE(back.lact_momentum);
  EXPECT_FALSE(back.lact_muon);
  for (bool momentum : {false, true}) {
    for (int64_t rank : {0, 3}) {
      ModelConfig m = c;
      m.lact_momentum = momentum, m.lact_low_rank = rank;
      Lact model(m);
      int64_t n = 0;
      for (auto& p : model.parameters()) n += p.numel();
      EXPECT_EQ(n, m.non_embedding_params() + m.embedding_params()) << momentum << " " << rank;
    }
  }
  ModelConfig bad = c;
  bad.lact_window = 4;
  EXPECT_NE(user_error_of([&] { bad.validate(); }).find("lact_window"), std::string::npos);
  bad = c, bad.n_kv_heads = 2;
  EXPECT_NE(user_error_of([&] { bad.validate(); }).find("n_kv_heads"), std::string::npos);
  bad = c, bad.lact_heads = 3;
  EXPECT_NE(user_error_of([&] { bad.validate(); }).find("lact_heads"), std::string::npos);
  bad = c, bad.lora_rank = 4, bad.lora_targets = {"q_proj"};
  EXPECT_NE(user_error_of([&] { bad.validate(); }).find("llama family only"), std::string::npos);
}

TEST(Training, LactFamilyTrainsAndRefusesPackedDocuments) {
  auto out = scratch_dir("train-lact");
  Recipe r = tiny_recipe(out, "lact", 60);
  r.set("model.family", "lact");
  r.set("model.lact_chunk", "8");
  r.set("model.lact_window", "8");
  r.set("model.lact_heads", "2");
  r.set("model.lact_momentum", "true");
  expect_trains(r);
  std::ostringstream log;
  TrainOptions o;
  o.out = &log;
  Recipe packed = tiny_recipe(out, "lact-packed", 2);
  packed.set("model.family", "lact");
  packed.set("model.lact_chunk", "8");
  packed.set("data.strategy", "bestfit");
  EXPECT_NE(user_error_of([&] { train(packed, o); }).find("strategy = concat"), std::string::npos);
  Recipe checkpointed = tiny_recipe(out, "lact-checkpointed", 2);  // a llama-only setting is named, not ignored
  checkpointed.set("model.family", "lact");
  checkpointed.set("model.lact_chunk", "8");
  checkpointed.set("train.checkpoint_layers", "true");
  EXPECT_NE(user_error_of([&] { train(checkpointed, o); }).find("train.checkpoint_layers = false"), std::string::npos);
}
