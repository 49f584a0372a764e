// AdamW against torch::optim::AdamW (its reference twin), decay policy, and schedule values at the
// phase boundaries.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "train/adamw.h"
#include "train/recipe.h"
#include "train/schedule.h"

using namespace cw;

TEST(AdamW, MatchesLibTorchAdamWWithDecayGroups) {
  torch::manual_seed(1);
  auto w1 = torch::randn({4, 3}, torch::requires_grad()), w2 = torch::randn({5}, torch::requires_grad());
  auto r1 = w1.detach().clone().requires_grad_(), r2 = w2.detach().clone().requires_grad_();
  AdamW ours({{"w", w1}, {"norm", w2}}, {true, false}, {0.9, 0.95, 1e-8, 0.1});
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{r1},
                      std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1)));
  groups.emplace_back(std::vector<torch::Tensor>{r2},
                      std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.0)));
  torch::optim::AdamW ref(groups);
  for (int step = 0; step < 10; ++step) {
    auto g1 = torch::randn({4, 3}), g2 = torch::randn({5});
    w1.mutable_grad() = g1.clone(), w2.mutable_grad() = g2.clone();
    r1.mutable_grad() = g1.clone(), r2.mutable_grad() = g2.clone();
    ours.step(1e-2);
    ref.step();
  }
  EXPECT_TRUE(torch::allclose(w1, r1, 1e-6, 1e-7)) << (w1 - r1).abs().max();
  EXPECT_TRUE(torch::allclose(w2, r2, 1e-6, 1e-7)) << (w2 - r2).abs().max();
  EXPECT_EQ(ours.steps(), 10);
}

TEST(AdamW, DefaultDecayPolicy) {
  auto m = torch::zeros({2, 2}), v = torch::zeros({2});
  EXPECT_TRUE(default_weight_decay("model.layers.0.self_attn.q_proj.weight", m, false, false));
  EXPECT_FALSE(default_weight_decay("model.embed_tokens.weight", m, false, false));
  EXPECT_TRUE(default_weight_decay("model.embed_tokens.weight", m, true, false));
  EXPECT_FALSE(default_weight_decay("model.norm.weight", v, false, false));
  EXPECT_TRUE(default_weight_decay("model.norm.weight", v, false, true));
}

TEST(Schedule, WarmupCosineBoundaries) {
  WarmupCosine s(1e-3, 1e-4, 10, 110);
  EXPECT_DOUBLE_EQ(s.lr(1), 1e-4);
  EXPECT_DOUBLE_EQ(s.lr(5), 5e-4);
  EXPECT_DOUBLE_EQ(s.lr(10), 1e-3);   // peak at the end of warmup
  EXPECT_DOUBLE_EQ(s.lr(60), 0.5 * (1e-3 + 1e-4));  // halfway through the decay
  EXPECT_DOUBLE_EQ(s.lr(110), 1e-4);  // min_lr at the last step
  for (int t = 11; t <= 110; ++t) EXPECT_LE(s.lr(t), s.lr(t - 1));
  Recipe r = Recipe::from_text("[schedule]\nname = constant\nwarmup_steps = 4\n[optim]\nlr = 0.2\n", "t");
  auto c = make_schedule(r);
  EXPECT_DOUBLE_EQ(c->lr(2), 0.1);
  EXPECT_DOUBLE_EQ(c->lr(900), 0.2);
}
