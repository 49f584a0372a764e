// Continual pre-training and SPDF: replay fraction within binomial tolerance, deterministic and resumable
// replay; [init] from loads weights with a fresh optimizer; sparse masks exact, masked weights and moments
// bitwise zero, dense fine-tuning moves them; the spec's FLOP example; a resumed run keeps the schedule,
// the replay stream and the masks.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>

#include "checkpoints/checkpoint.h"
#include "common/error.h"
#include "common/json.h"
#include "data/replay_sampler.h"
#include "tests/test_util.h"
#include "train/recipe.h"
#include "train/sparsity.h"
#include "train/trainer.h"

using namespace cw;
using namespace cw::test;

static std::shared_ptr<const std::vector<uint32_t>> stream(int64_t n, uint32_t base) {
  auto v = std::make_shared<std::vector<uint32_t>>();
  for (int64_t i = 0; i < n; ++i) v->push_back(base + uint32_t(i % 1000));
  return v;
}

static ReplaySampler make_replay(double fraction) {
  WindowSamplerOptions o;
  o.seq_len = 4, o.batch_size = 8, o.seed = 3;
  auto fresh = std::make_unique<WindowSampler>(stream(4001, 0), o);
  auto old = std::make_unique<WindowSampler>(stream(4001, 5000), o);
  return ReplaySampler(std::move(fresh), std::move(old), fraction, 8, 3);
}

TEST(Replay, FractionWithinBinomialToleranceAndRowsComeFromTheRightStore) {
  for (double p : {0.05, 0.25}) {
    ReplaySampler s = make_replay(p);
    for (int i = 0; i < 500; ++i) {
      Batch b = s.next();
      for (int64_t r = 0; r < 8; ++r) EXPECT_EQ(b.tokens[r][0].item<int64_t>() >= 5000, s.last_row_replayed(r));
    }
    const double n = double(s.rows()), sd = std::sqrt(n * p * (1 - p));
    EXPECT_NEAR(double(s.replayed_rows()), n * p, 4 * sd) << "fraction " << p;
  }
}

TEST(Replay, DeterministicAndResumable) {
  ReplaySampler a = make_replay(0.25), b = make_replay(0.25);
  for (int i = 0; i < 37; ++i) EXPECT_TRUE(torch::equal(a.next().tokens, b.next().tokens));
  std::string state = a.state();
  ReplaySampler c = make_replay(0.25);
  c.restore(state);
  for (int i = 0; i < 50; ++i) EXPECT_TRUE(torch::equal(a.next().tokens, c.next().tokens)) << i;
  ReplaySampler other = make_replay(0.05);
  EXPECT_THROW(other.restore(state), UserError);
}

TEST(Spdf, FlopCounterReproducesThePapersRatio) {
  // GPT-3 XL: d 2048, 24 layers, n_ctx 2048, vocab 50257; 12 L d^2 sparsifiable weights.
  const double n = 12.0 * 24 * 2048.0 * 2048.0;
  const double dense = spdf_train_flops_per_token(n, 2048, 24, 2048, 50257, 0.0);
  EXPECT_NEAR(dense / spdf_train_flops_per_token(n, 2048, 24, 2048, 50257, 0.75), 2.49, 0.005);
  EXPECT_NEAR(dense / spdf_train_flops_per_token(n, 2048, 24, 2048, 50257, 0.50), 1.66, 0.01);
}

TEST(Spdf, MasksKeepExactCountsOnTheRightTensors) {
  NamedTensors params = {{"model.embed_tokens.weight", torch::randn({10, 8})},
                         {"model.layers.0.self_attn.q_proj.weight", torch::randn({8, 8})},
                         {"model.layers.0.mlp.up_proj.weight", torch::randn({7, 9})},
                         {"model.layers.0.input_layernorm.weight", torch::randn({8})},
                         {"lm_head.weight", torch::randn({10, 8})}};
  SparsityMasks m = SparsityMasks::create(params, 0.75, 11);
  EXPECT_EQ(m.kept("model.layers.0.self_attn.q_proj.weight"), 16);   // exactly (1 - s) numel
  EXPECT_EQ(m.kept("model.layers.0.mlp.up_proj.weight"), 16);        // round(0.25 * 63)
  EXPECT_EQ(m.kept("model.embed_tokens.weight"), -1);
  EXPECT_EQ(m.kept("lm_head.weight"), -1);
  EXPECT_EQ(m.kept("model.layers.0.input_layernorm.weight"), -1);
  EXPECT_EQ((params[1].second != 0).sum().item<int64_t>(), 16);     // weights masked at creation
  EXPECT_EQ(m.tensors().size(), 2u);
}

static Recipe tiny(const fs::path& out, const std::string& name, int64_t steps) {
  Recipe r = tiny_recipe(out, name, steps);
  r.set("train.eval_every", "0");
  r.set("train.log_every", "100");
  return r;
}

TEST(Spdf, MaskedWeightsAndMomentsStayZeroAndDenseFineTuningMovesThem) {
  auto out = scratch_dir("spdf");
  std::ostringstream log;
  Recipe sparse = tiny(out, "sparse", 6);
  sparse.set("sparsity.level", "0.75");
  TrainResult res = train(sparse, TrainOptions{false, 0, &log});
  EXPECT_NE(log.str().find("FLOPs/token"), std::string::npos) << log.str();
  auto ck = load_checkpoint(*latest_checkpoint(res.run_dir));
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  auto mask = ck.masks.at("mask." + q).to(torch::kBool);
  EXPECT_EQ(mask.sum().item<int64_t>(), mask.numel() / 4);
  EXPECT_EQ(ck.model.at(q).masked_select(mask.logical_not()).abs().max().item<float>(), 0.0f);
  EXPECT_EQ(ck.optimizer.at("exp_avg." + q).masked_select(mask.logical_not()).abs().max().item<float>(), 0.0f);
  EXPECT_EQ(ck.optimizer.at("exp_avg_sq." + q).masked_select(mask.logical_not()).abs().max().item<float>(), 0.0f);
  EXPECT_GT(ck.model.at(q).masked_select(mask).abs().min().item<float>(), 0.0f);
  EXPECT_EQ(ck.masks.count("mask.model.embed_tokens.weight"), 0u);

  // Resume keeps the masks: the final weights equal an uninterrupted run's.
  Recipe crashy = tiny(out, "sparse-crashy", 6);
  crashy.set("sparsity.level", "0.75");
  train(crashy, TrainOptions{false, 4, &log});
  train(crashy, TrainOptions{true, 0, &log});
  auto ck2 = load_checkpoint(*latest_checkpoint(out / "sparse-crashy"));
  for (auto& [name, t] : ck.model) EXPECT_TRUE(torch::equal(t, ck2.model.at(name))) << name;

  // Dense fine-tuning from the sparse checkpoint: no masks, fresh optimizer, zeros start to move.
  Recipe dense = tiny(out, "dense-ft", 1);
  dense.set("init.from", res.run_dir.string());
  dense.set("schedule.warmup_steps", "0");
  TrainResult ft = train(dense, TrainOptions{false, 0, &log});
  auto ck3 = load_checkpoint(*latest_checkpoint(ft.run_dir));
  EXPECT_TRUE(ck3.masks.empty());
  EXPECT_GT(ck3.model.at(q).masked_select(mask.logical_not()).abs().min().item<float>(), 0.0f);
  EXPECT_NE(log.str().find("initialised weights from"), std::string::npos);
}

TEST(Continual, InitFromLoadsWeightsWithAFreshOptimizerAndSchedule) {
  auto out = scratch_dir("continual");
  std::ostringstream log;
  TrainResult base = train(tiny(out, "base", 6), TrainOptions{false, 0, &log});
  auto src = load_checkpoint(*latest_checkpoint(base.run_dir));

  Recipe cont = tiny(out, "cont", 1);
  cont.set("init.from", (base.run_dir / "checkpoints" / "step-6").string());
  cont.set("optim.lr", "1e-12");  // nearly no update: the weights must be the source's
  cont.set("optim.min_lr", "0");
  cont.set("schedule.warmup_steps", "0");
  cont.set("optim.weight_decay", "0");
  train(cont, TrainOptions{false, 0, &log});
  auto after = load_checkpoint(*latest_checkpoint(out / "cont"));
  for (auto& [name, t] : src.model) EXPECT_TRUE(torch::allclose(t, after.model.at(name), 0, 1e-9)) << name;
  json st = json::parse(after.state_json);
  EXPECT_EQ(st["optimizer_steps"], 1);  // fresh optimizer: one step, not 7
  EXPECT_EQ(st["step"], 1);             // fresh schedule

  Recipe keep_opt = tiny(out, "cont-opt", 1);
  keep_opt.set("schedule.warmup_steps", "0");
  keep_opt.set("init.from", base.run_dir.string());
  keep_opt.set("init.optimizer", "checkpoint");
  train(keep_opt, TrainOptions{false, 0, &log});
  EXPECT_EQ(json::parse(load_checkpoint(*latest_checkpoint(out / "cont-opt")).state_json)["optimizer_steps"], 7);

  Recipe bad = tiny(out, "bad", 1);
  bad.set("schedule.warmup_steps", "0");
  bad.set("init.from", (out / "nowhere").string());
  EXPECT_THROW(train(bad, TrainOptions{false, 0, &log}), UserError);
}

TEST(Continual, ResumedRunKeepsScheduleAndReplayStream) {
  auto out = scratch_dir("continual-resume");
  fs::path data = shared_prepared_data();
  auto configure = [&](Recipe r) {
    r.set("data.replay", (data / "val.h5").string());
    r.set("data.replay_fraction", "0.25");
    r.set("schedule.name", "wsd");
    r.set("schedule.decay_steps", "3");
    r.set("data.eval_sets", "old=" + (data / "val.h5").string());
    r.set("train.eval_every", "3");
    return r;
  };
  std::ostringstream log;
  TrainResult full = train(configure(tiny(out, "full", 8)), TrainOptions{false, 0, &log});
  Recipe crashy = configure(tiny(out, "crashy", 8));
  train(crashy, TrainOptions{false, 5, &log});
  TrainResult resumed = train(crashy, TrainOptions{true, 0, &log});
  ASSERT_EQ(resumed.losses.size(), 5u);
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(resumed.losses[i], full.losses[i + 3]) << "step " << i + 4;
  auto a = load_checkpoint(*latest_checkpoint(full.run_dir)), b = load_checkpoint(*latest_checkpoint(resumed.run_dir));
  for (auto& [name, t] : a.model) EXPECT_TRUE(torch::equal(t, b.model.at(name))) << name;
  EXPECT_EQ(json::parse(a.state_json)["sampler"], json::parse(b.state_json)["sampler"]);
  // The learning rates logged after resuming are the schedule's.
  std::ifstream in(resumed.run_dir / "metrics.jsonl");
  std::string line;
  int seen_old = 0;
  while (std::getline(in, line)) {
    json j = json::parse(line);
    if (j.contains("val_loss.old")) ++seen_old;
  }
  EXPECT_GE(seen_old, 2);
  EXPECT_NE(log.str().find("val_loss.old"), std::string::npos);
}
