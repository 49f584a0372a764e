// AdamW against torch::optim::AdamW (its reference twin) and the weight-decay policy.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "train/adamw.h"
#include "train/grad_clip.h"

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

TEST(AdamW, FusedKernelMatchesTheLoop) {
  torch::manual_seed(2);
  auto a1 = torch::randn({6, 5}, torch::requires_grad()), a2 = torch::randn({5}, torch::requires_grad());
  auto b1 = a1.detach().clone().requires_grad_(), b2 = a2.detach().clone().requires_grad_();
  AdamW loop({{"w", a1}, {"norm", a2}}, {true, false}, {0.9, 0.95, 1e-8, 0.1, false});
  AdamW fused({{"w", b1}, {"norm", b2}}, {true, false}, {0.9, 0.95, 1e-8, 0.1, true});
  for (int step = 0; step < 10; ++step) {
    auto g1 = torch::randn({6, 5}), g2 = torch::randn({5});
    a1.mutable_grad() = g1.clone(), a2.mutable_grad() = g2.clone();
    b1.mutable_grad() = g1.clone(), b2.mutable_grad() = g2.clone();
    loop.step(1e-2 * (step + 1));
    fused.step(1e-2 * (step + 1));
  }
  EXPECT_TRUE(torch::allclose(a1, b1, 1e-6, 1e-7)) << (a1 - b1).abs().max();
  EXPECT_TRUE(torch::allclose(a2, b2, 1e-6, 1e-7)) << (a2 - b2).abs().max();
  EXPECT_TRUE(torch::allclose(loop.slots()[0].exp_avg_sq, fused.slots()[0].exp_avg_sq, 1e-6, 1e-9));
}

// step(lr, skip) with skip = 1 changes nothing, the step count included, on both paths: equal to a run
// that never saw those steps (whose gradients are garbage).
TEST(AdamW, SkippedStepsChangeNothing) {
  for (bool fused : {false, true}) {
    SCOPED_TRACE(fused ? "fused" : "loop");
    torch::manual_seed(5);
    auto a = torch::randn({6, 5}, torch::requires_grad());
    auto b = a.detach().clone().requires_grad_();
    AdamW skipping({{"w", a}}, {true}, {0.9, 0.95, 1e-8, 0.1, fused});
    AdamW plain({{"w", b}}, {true}, {0.9, 0.95, 1e-8, 0.1, fused});
    for (int step = 0; step < 8; ++step) {
      const bool bad = step == 2 || step == 3;
      auto g = torch::randn({6, 5});
      a.mutable_grad() = bad ? torch::full({6, 5}, NAN) : g.clone();
      skipping.step(1e-2, torch::full({1}, bad ? 1.0f : 0.0f));
      if (bad) continue;
      b.mutable_grad() = g.clone();
      plain.step(1e-2);
    }
    EXPECT_TRUE(torch::equal(a, b)) << (a - b).abs().max();
    EXPECT_TRUE(torch::equal(skipping.slots()[0].exp_avg, plain.slots()[0].exp_avg));
    EXPECT_EQ(skipping.steps(), 6);
    EXPECT_EQ(plain.steps(), 6);
  }
}

// The fused path with the learning rate as a tensor (what a captured CUDA graph replays) equals the double.
TEST(AdamW, LearningRateTensorEqualsTheNumber) {
  torch::manual_seed(6);
  auto a = torch::randn({6, 5}, torch::requires_grad());
  auto b = a.detach().clone().requires_grad_();
  AdamW by_number({{"w", a}}, {true}, {0.9, 0.95, 1e-8, 0.1, true});
  AdamW by_tensor({{"w", b}}, {true}, {0.9, 0.95, 1e-8, 0.1, true});
  auto lr = torch::zeros({1});
  for (int step = 0; step < 5; ++step) {
    auto g = torch::randn({6, 5});
    a.mutable_grad() = g.clone(), b.mutable_grad() = g.clone();
    by_number.step(1e-2 * (step + 1), torch::zeros({1}));
    lr.fill_(1e-2 * (step + 1));
    by_tensor.step(lr, torch::zeros({1}));
  }
  EXPECT_LE((a - b).abs().max().item<double>(), 1e-7);
  EXPECT_EQ(by_tensor.steps(), 5);
}

TEST(AdamW, DefaultDecayPolicy) {
  auto m = torch::zeros({2, 2}), v = torch::zeros({2});
  EXPECT_TRUE(default_weight_decay("model.layers.0.self_attn.q_proj.weight", m, false, false));
  EXPECT_FALSE(default_weight_decay("model.embed_tokens.weight", m, false, false));
  EXPECT_TRUE(default_weight_decay("model.embed_tokens.weight", m, true, false));
  EXPECT_FALSE(default_weight_decay("model.norm.weight", v, false, false));
  EXPECT_TRUE(default_weight_decay("model.norm.weight", v, false, true));
}

// Clipping folded into the optimizer (gradients divided by clip_divisor as AdamW reads them) against clipping
// first and stepping after, on both paths, with gradients that get clipped in some steps and not in others.
TEST(AdamW, GradDivisorEqualsClippingFirst) {
  for (bool fused : {false, true}) {
    SCOPED_TRACE(fused ? "fused" : "loop");
    torch::manual_seed(11);
    auto a = torch::randn({6, 5}, torch::requires_grad()), b = a.detach().clone().requires_grad_();
    AdamW first({{"w", a}}, {true}, {0.9, 0.95, 1e-8, 0.1, fused});
    AdamW folded({{"w", b}}, {true}, {0.9, 0.95, 1e-8, 0.1, fused});
    const double max_norm = 4.0;
    for (int step = 0; step < 8; ++step) {
      auto g = torch::randn({6, 5}) * (step % 2 ? 0.1 : 5.0);  // norm about 0.5 or 27
      a.mutable_grad() = g.clone(), b.mutable_grad() = g.clone();
      const double na = clip_grad_norm({a}, max_norm).item<double>();
      first.step(1e-2, torch::zeros({1}));
      auto nb = grad_norm({b});
      const auto divisor = clip_divisor(nb, max_norm);
      EXPECT_NEAR(divisor.item<double>(), std::max(1.0, (na + 1e-6) / max_norm), 1e-6);
      folded.step(1e-2, torch::zeros({1}), divisor);
      EXPECT_NEAR(nb.item<double>(), na, 1e-6 * na);
    }
    EXPECT_TRUE(torch::allclose(a, b, 1e-6, 1e-7)) << (a - b).abs().max();
    EXPECT_TRUE(torch::allclose(first.slots()[0].exp_avg_sq, folded.slots()[0].exp_avg_sq, 1e-6, 1e-9));
  }
}

TEST(GradClip, MatchesLibTorchClipGradNorm) {
  torch::manual_seed(8);
  auto make = [] {
    std::vector<torch::Tensor> ps;
    for (auto shape : std::vector<std::vector<int64_t>>{{7, 3}, {11}, {2, 5, 4}}) {
      auto p = torch::randn(shape).requires_grad_(true);
      p.mutable_grad() = torch::randn(shape) * 3;
      ps.push_back(p);
    }
    ps.push_back(torch::randn({4}).requires_grad_(true));  // no gradient: skipped by both
    return ps;
  };
  for (double max_norm : {0.5, 1e9, double(INFINITY)}) {
    torch::manual_seed(9);
    auto ours = make();
    torch::manual_seed(9);
    auto theirs = make();
    const double got = clip_grad_norm(ours, max_norm).item<double>();
    const double want = torch::nn::utils::clip_grad_norm_(theirs, max_norm);
    EXPECT_NEAR(got, want, 1e-6 * want) << max_norm;
    for (size_t i = 0; i + 1 < ours.size(); ++i)
      EXPECT_TRUE(torch::allclose(ours[i].grad(), theirs[i].grad(), 1e-6, 1e-7)) << max_norm << " " << i;
    if (max_norm > 1e8) {  // no clipping: the gradients are untouched
      torch::manual_seed(9);
      auto fresh = make();
      for (size_t i = 0; i + 1 < ours.size(); ++i) EXPECT_TRUE(torch::equal(ours[i].grad(), fresh[i].grad())) << i;
    }
  }
}
