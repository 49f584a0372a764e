// Checkpoints: complete round trip, retention, incomplete folders skipped, truncated or corrupted files
// rejected with a message that says what to do.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "checkpoints/checkpoint.h"
#include "common/error.h"
#include "tests/test_util.h"

using namespace cw;
using namespace cw::test;

static CheckpointContents contents(int64_t seed) {
  torch::manual_seed(uint64_t(seed));
  return {{{"model.w", torch::randn({64, 64})}, {"model.b", torch::randn({64})}},
          {{"exp_avg.model.w", torch::randn({64, 64})}},
          {{"cpu", torch::randint(0, 255, {16}, torch::kUInt8)}},
          {{"mask.model.w", torch::randint(0, 2, {64, 64}, torch::kUInt8)}},
          "{\"step\": " + std::to_string(seed) + "}",
          "[run]\nname = x\n"};
}

TEST(Checkpoint, RoundTripRetentionAndLatest) {
  auto run = scratch_dir("ckpt-run");
  for (int64_t s : {10, 20, 30, 40}) save_checkpoint(run, s, contents(s), 2);
  EXPECT_FALSE(fs::exists(checkpoints_dir(run) / "step-10"));
  EXPECT_FALSE(fs::exists(checkpoints_dir(run) / "step-20"));
  ASSERT_EQ(latest_checkpoint(run), checkpoints_dir(run) / "step-40");
  auto c = load_checkpoint(*latest_checkpoint(run));
  auto expect = contents(40);
  EXPECT_EQ(c.step, 40);
  EXPECT_TRUE(torch::equal(c.model["model.w"], expect.model[0].second));
  EXPECT_TRUE(torch::equal(c.optimizer["exp_avg.model.w"], expect.optimizer[0].second));
  EXPECT_TRUE(torch::equal(c.rng["cpu"], expect.rng[0].second));
  EXPECT_TRUE(torch::equal(c.masks["mask.model.w"], expect.masks[0].second));
  EXPECT_EQ(c.state_json, expect.state_json);
  EXPECT_EQ(c.recipe_ini, expect.recipe_ini);
  // A folder without a manifest (a crash mid-write) is never picked, nor one whose number is not a step's.
  fs::create_directories(checkpoints_dir(run) / "step-50");
  fs::create_directories(checkpoints_dir(run) / "step-99999999999999999999999");
  write_text(checkpoints_dir(run) / "step-99999999999999999999999" / "manifest.json", "{}");
  EXPECT_EQ(latest_checkpoint(run), checkpoints_dir(run) / "step-40");
  EXPECT_NE(user_error_of([&] { load_checkpoint(checkpoints_dir(run) / "step-50"); }).find("incomplete"), std::string::npos);
}

TEST(Checkpoint, TruncatedOrCorruptedFilesAreRejected) {
  auto run = scratch_dir("ckpt-corrupt");
  fs::path dir = save_checkpoint(run, 1, contents(1), 0);
  auto model = dir / "model.safetensors";
  auto size = fs::file_size(model);

  flip_byte(model, size - 100);  // inside the weights: the header still parses, the CRC does not match
  std::string e = user_error_of([&] { load_checkpoint(dir); });
  EXPECT_NE(e.find("CRC-32"), std::string::npos) << e;
  EXPECT_NE(e.find("model.safetensors"), std::string::npos) << e;

  flip_byte(model, size - 100);  // undo
  EXPECT_NO_THROW(load_checkpoint(dir));
  truncate_file(dir / "optimizer.safetensors", 100);
  e = user_error_of([&] { load_checkpoint(dir); });
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
  EXPECT_NE(e.find("optimizer.safetensors"), std::string::npos) << e;
  EXPECT_NE(e.find("no other complete checkpoint"), std::string::npos) << e;

  // With an earlier complete checkpoint beside it, the message names it and the folder to move aside; moved
  // aside as told, the run's newest checkpoint is the earlier one and the bad one is still there.
  auto run2 = scratch_dir("ckpt-corrupt-earlier");
  save_checkpoint(run2, 10, contents(10), 0);
  fs::path bad = save_checkpoint(run2, 20, contents(20), 0);
  flip_byte(bad / "rng.safetensors", 10);
  e = user_error_of([&] { load_checkpoint(*latest_checkpoint(run2)); });
  EXPECT_NE(e.find("to continue from step-10"), std::string::npos) << e;
  const std::string mv = "mv " + bad.string() + " " + bad.string() + ".bad";
  ASSERT_NE(e.find(mv), std::string::npos) << e;
  fs::rename(bad, bad.string() + ".bad");
  EXPECT_EQ(latest_checkpoint(run2), checkpoints_dir(run2) / "step-10");
  EXPECT_EQ(load_checkpoint(*latest_checkpoint(run2)).step, 10);
  save_checkpoint(run2, 30, contents(30), 1);  // retention keeps the moved folder
  EXPECT_TRUE(fs::exists(bad.string() + ".bad"));

  write_text(dir / "manifest.json", "{\"format\": \"something else\"}");
  EXPECT_NE(user_error_of([&] { load_checkpoint(dir); }).find("not a chunkwise checkpoint"), std::string::npos);
}
