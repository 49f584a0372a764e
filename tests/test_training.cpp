// Training end to end on a tiny model: loss goes down below the unigram entropy, a run stopped at step k
// and resumed reproduces the uninterrupted run bitwise, the NaN guard keeps NaN out of weights and
// checkpoints, the CLI turns recipe errors into exit code 2 with a message, and SIGTERM (a stop request) ends a
// run with a checkpoint of its last step that resumes bitwise.
#include <gtest/gtest.h>
#include <signal.h>
#include <torch/torch.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "checkpoints/checkpoint.h"
#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "data/tokenizer.h"
#include "models/causal_lm.h"
#include "tests/test_util.h"
#include "train/recipe.h"
#include "train/step_log.h"
#include "train/step_profile.h"
#include "train/trainer.h"

using namespace cw;
using namespace cw::test;

static std::vector<double> metric_losses(const fs::path& run) {
  std::vector<double> out;
  std::ifstream in(run / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    json j = json::parse(line);
    if (j.contains("loss") && !j["loss"].is_null()) out.push_back(j["loss"].get<double>());
  }
  return out;
}

TEST(Training, LossFallsBelowUnigramEntropy) {
  auto out = scratch_dir("train-learn");
  Recipe r = tiny_recipe(out, "learn", 60);
  std::ostringstream log;
  TrainOptions o;
  o.out = &log;
  TrainResult res = train(r, o);
  ASSERT_EQ(res.losses.size(), 60u);
  EXPECT_LT(res.losses.back(), res.losses.front() - 1.0) << log.str();
  EXPECT_LT(res.val_loss, res.unigram_entropy) << log.str();
  EXPECT_NE(log.str().find("tok/s"), std::string::npos);
  EXPECT_NE(log.str().find("ETA"), std::string::npos);
  EXPECT_EQ(metric_losses(res.run_dir).size(), 60u);
}

TEST(Training, ResumedRunIsBitwiseTheUninterruptedRun) {
  auto out = scratch_dir("train-resume");
  std::ostringstream log;
  TrainOptions o;
  o.out = &log;
  TrainResult full = train(tiny_recipe(out, "full", 8), o);

  Recipe r = tiny_recipe(out, "crashy", 8);
  o.stop_at = 5;  // checkpoints at 3 and 6: the "crash" after step 5 loses steps 4-5
  TrainResult first = train(r, o);
  EXPECT_EQ(first.last_step, 5);
  EXPECT_THROW(train(r, TrainOptions{false, 0, &log}), UserError);  // must ask for --resume
  o.stop_at = 0;
  o.resume = true;
  TrainResult second = train(r, o);
  EXPECT_EQ(second.first_step, 4);
  ASSERT_EQ(second.losses.size(), 5u);
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(second.losses[i], full.losses[i + 3]) << "step " << i + 4;
  EXPECT_EQ(second.val_loss, full.val_loss);

  auto a = load_checkpoint(*latest_checkpoint(full.run_dir)), b = load_checkpoint(*latest_checkpoint(second.run_dir));
  EXPECT_EQ(a.step, 8);
  EXPECT_EQ(b.step, 8);
  for (auto& [name, t] : a.model) EXPECT_TRUE(torch::equal(t, b.model.at(name))) << name;
  for (auto& [name, t] : a.optimizer) EXPECT_TRUE(torch::equal(t, b.optimizer.at(name))) << name;
  EXPECT_EQ(metric_losses(full.run_dir), metric_losses(second.run_dir));  // metrics past step 3 were rewritten
}

// A stop request (what SIGTERM becomes in the CLI) ends the run after the step it arrives in, with a checkpoint
// of that step; resuming from it reproduces the uninterrupted run bitwise.
TEST(Training, StopRequestCheckpointsAndTheResumedRunIsBitwiseTheSame) {
  auto out = scratch_dir("train-stop-request");
  std::ostringstream log;
  TrainOptions o;
  o.out = &log;
  TrainResult full = train(tiny_recipe(out, "full", 8), o);
  Recipe r = tiny_recipe(out, "stopped", 8);
  int asked = 0;
  o.stop_requested = [&] { return ++asked >= 5; };  // during step 5; checkpoints are due at 3 and 6 only
  TrainResult first = train(r, o);
  EXPECT_TRUE(first.stopped_on_request);
  EXPECT_EQ(first.last_step, 5);
  EXPECT_EQ(load_checkpoint(*latest_checkpoint(first.run_dir)).step, 5);
  EXPECT_NE(log.str().find("stopped on request after step 5: checkpoint written"), std::string::npos) << log.str();
  o.stop_requested = nullptr;
  o.resume = true;
  TrainResult second = train(r, o);
  EXPECT_FALSE(second.stopped_on_request);
  EXPECT_EQ(second.first_step, 6);
  EXPECT_EQ(metric_losses(full.run_dir), metric_losses(second.run_dir));
  auto a = load_checkpoint(*latest_checkpoint(full.run_dir)), b = load_checkpoint(*latest_checkpoint(second.run_dir));
  for (auto& [name, t] : a.model) EXPECT_TRUE(torch::equal(t, b.model.at(name))) << name;
}

// `chunkwise train` answers SIGTERM (sent here once a few steps are logged) by finishing its step, writing a
// checkpoint of it and exiting with 143 (128 + SIGTERM), as schedulers expect of a stopped job.
TEST(Cli, SigtermWritesACheckpointOfTheLastStepAndExits143) {
  auto dir = scratch_dir("train-sigterm");
  const fs::path ini = dir / "long.ini", run = dir / "long";
  write_text(ini, tiny_recipe(dir, "long", 1000000).resolved_ini());
  const std::string d = dir.string() + "/";
  write_text(dir / "run.sh", chunkwise_bin() + " train " + ini.string() + " --train.ckpt_every=0 --train.eval_every=0" +
                                 " > " + d + "log 2>&1 & echo $! > " + d + "pid\n" +
                                 "wait $!; echo $? > " + d + "rc.tmp; mv " + d + "rc.tmp " + d + "rc\n");
  start_script(dir / "run.sh");
  const bool logging = wait_until([&] { return count_lines(run / "metrics.jsonl") >= 3; }, 120);
  const pid_t pid = pid_t(std::stol("0" + read_file(dir / "pid")));
  if (!logging && pid > 0) ::kill(pid, SIGKILL);  // no run of a million steps left behind
  ASSERT_TRUE(logging && pid > 0) << read_file(dir / "log");
  ::kill(pid, SIGTERM);
  const bool ended = wait_until([&] { return fs::exists(dir / "rc"); }, 120);
  if (!ended) ::kill(pid, SIGKILL);
  ASSERT_TRUE(ended);
  EXPECT_EQ(std::stoi(read_file(dir / "rc")), 143) << read_file(dir / "log");
  const int64_t last = int64_t(count_lines(run / "metrics.jsonl"));  // one line per step (no evaluations)
  EXPECT_NE(read_file(dir / "log").find("stopped on request after step " + std::to_string(last)), std::string::npos)
      << read_file(dir / "log");
  EXPECT_EQ(load_checkpoint(*latest_checkpoint(run)).step, last);
}

TEST(Training, FusedKernelsTrainLikeTheUnfusedOps) {  // [train] fused_kernels through the trainer
  auto out = scratch_dir("train-fused");
  std::ostringstream log;
  TrainOptions o;
  o.out = &log;
  Recipe p = tiny_recipe(out, "plain", 6);
  p.set("train.fused_kernels", "false");
  TrainResult plain = train(p, o);
  Recipe r = tiny_recipe(out, "fused", 6);
  r.set("train.fused_kernels", "true");
  TrainResult fused = train(r, o);
  EXPECT_EQ(fused_kernels_wanted("auto", torch::Device(torch::kCPU)), false);  // auto: CUDA only
  EXPECT_EQ(fused_kernels_wanted("auto", torch::Device(torch::kCUDA, 0)), true);
  ASSERT_EQ(fused.losses.size(), plain.losses.size());
  for (size_t i = 0; i < plain.losses.size(); ++i)
    EXPECT_NEAR(fused.losses[i], plain.losses[i], 1e-4 * std::abs(plain.losses[i])) << "step " << i + 1;
  EXPECT_NEAR(fused.val_loss, plain.val_loss, 1e-4 * plain.val_loss);
}

TEST(Training, NonFiniteStepsNeverReachWeightsOrCheckpoints) {
  auto out = scratch_dir("train-nan");
  Recipe r = tiny_recipe(out, "nan", 6);
  r.set("debug.inject_nan_steps", "2,3");
  std::ostringstream log;
  TrainOptions o;
  o.out = &log;
  TrainResult res = train(r, o);
  EXPECT_EQ(res.skipped_steps, 2);
  EXPECT_TRUE(std::isnan(res.losses[1]) && std::isnan(res.losses[2]));
  auto ck = load_checkpoint(*latest_checkpoint(res.run_dir));
  for (auto& [name, t] : ck.model) EXPECT_TRUE(torch::isfinite(t).all().item<bool>()) << name;
  for (auto& [name, t] : ck.optimizer) EXPECT_TRUE(torch::isfinite(t).all().item<bool>()) << name;

  Recipe stop = tiny_recipe(out, "nan-stop", 6);
  stop.set("debug.inject_nan_steps", "2,3,4");
  stop.set("train.max_bad_steps", "3");
  try {
    train(stop, o);
    ADD_FAILURE() << "did not stop";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("3 non-finite steps in a row"), std::string::npos) << e.what();
  }
  Recipe typo = tiny_recipe(out, "nan-typo", 6);  // a typo is an error naming the key, not "stoll"
  typo.set("debug.inject_nan_steps", "2,x");
  EXPECT_NE(user_error_of([&] { train(typo, o); }).find("inject_nan_steps = '2,x': 'x' is not a step number"),
            std::string::npos);
}

TEST(Training, TokenizerMismatchIsRefused) {
  auto out = scratch_dir("train-tokmismatch");
  TokenizerTrainOptions t;
  t.vocab_size = 300;
  train_tokenizer(synthetic_corpus(40, 9), out / "other.model", t);
  Recipe r = tiny_recipe(out, "mismatch", 2);
  r.set("data.tokenizer", (out / "other.model").string());
  try {
    std::ostringstream log;
    train(r, TrainOptions{false, 0, &log});
    ADD_FAILURE();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer mismatch"), std::string::npos) << e.what();
  }
}

TEST(Cli, RecipeErrorsExitNonZeroWithTheKeyAndFile) {
  auto dir = scratch_dir("cli-errors");
  write_text(dir / "bad.ini", "[model]\nd_model = 64\nwidth = 3\n");
  std::string out;
  EXPECT_EQ(run_command(chunkwise_bin() + " train " + (dir / "bad.ini").string(), &out), 2);
  EXPECT_NE(out.find("model.width"), std::string::npos) << out;
  EXPECT_NE(out.find("bad.ini"), std::string::npos) << out;
  EXPECT_EQ(run_command(chunkwise_bin() + " train " + (dir / "none.ini").string(), &out), 2);
  EXPECT_NE(out.find("not found"), std::string::npos) << out;
  write_text(dir / "ok.ini", "[model]\nd_model = 64\n");
  EXPECT_EQ(run_command(chunkwise_bin() + " train " + (dir / "ok.ini").string() + " --model.n_layers=two", &out), 2);
  EXPECT_NE(out.find("model.n_layers"), std::string::npos) << out;
  EXPECT_EQ(run_command(chunkwise_bin() + " train " + (dir / "ok.ini").string() + " --print-recipe --model.n_layers=7", &out), 0);
  EXPECT_NE(out.find("n_layers = 7"), std::string::npos) << out;
  EXPECT_EQ(run_command(chunkwise_bin() + " train " + (dir / "ok.ini").string(), &out), 2);  // no data set
  EXPECT_NE(out.find("[data] train is not set"), std::string::npos) << out;
  EXPECT_EQ(run_command(chunkwise_bin() + " frobnicate", &out), 2);
  // Counts out of range on the other commands are refused by flag before any file is read or written.
  EXPECT_EQ(run_command(chunkwise_bin() + " export " + (dir / "run").string() + " " + (dir / "b").string() +
                            " --shard-size-mb 0", &out), 2);
  EXPECT_NE(out.find("--shard-size-mb 0"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir / "b"));
  EXPECT_EQ(run_command(chunkwise_bin() + " bench train --config tiny --device cpu --steps 0", &out), 2);
  EXPECT_NE(out.find("--steps"), std::string::npos) << out;
  EXPECT_EQ(run_command(chunkwise_bin() + " bench train --config tiny --device gpu", &out), 2);  // not silently auto
  EXPECT_NE(out.find("device 'gpu': use auto, cpu or cuda"), std::string::npos) << out;
}

// The GPU profile's idle time: stretches no operation covers, named by the operation that ended last before
// them and the one that ends them; overlapping (concurrent) and touching operations leave no gap.
TEST(Training, DeviceGapsAreTheStretchesNoOperationCovers) {
  std::vector<DeviceInterval> iv = {{12, 20, "b"}, {0, 10, "a"}, {15, 30, "c"}, {16, 18, "inner"},
                                    {35, 40, "d"}, {40, 50, "e"}, {42, 45, "f"}, {53, 60, "d"}};
  double idle = 0;
  auto gaps = device_gaps(iv, /*runs=*/1, idle);
  EXPECT_DOUBLE_EQ(idle, 10e-6);  // 2 + 5 + 3 ns
  ASSERT_EQ(gaps.size(), 3u);
  EXPECT_EQ(gaps[0].before, "c");  // c ends last (30), not the inner operation (18)
  EXPECT_EQ(gaps[0].after, "d");
  EXPECT_DOUBLE_EQ(gaps[0].ms, 5e-6);
  EXPECT_EQ(gaps[1].before, "e");  // e (to 50) covers f
  EXPECT_DOUBLE_EQ(gaps[1].ms, 3e-6);
  EXPECT_EQ(gaps[2].before, "a");
  EXPECT_EQ(gaps[2].after, "b");
  auto twice = device_gaps(iv, /*runs=*/2, idle);
  EXPECT_DOUBLE_EQ(idle, 5e-6);  // per run
  EXPECT_EQ(twice[0].count, 1);
}

// `bench train --profile`: the step's time by operation and category (CPU here; GPU kernel time on CUDA).
TEST(Training, BenchTrainProfileBreaksTheStepDown) {
  std::string out;
  ASSERT_EQ(run_command(chunkwise_bin() + " bench train --config tiny --device cpu --steps 1 --warmup 1 --profile 1 2>/dev/null", &out), 0)
      << out;
  const auto at = out.find("{\"bench\":\"train-profile\"");
  ASSERT_NE(at, std::string::npos) << out;
  json p = json::parse(out.substr(at, out.find('\n', at) - at));
  EXPECT_GT(p["categories_ms"].value("matrix products", 0.0), 0.0);
  EXPECT_GT(p["profiled_ms"].get<double>(), 0.0);
  ASSERT_FALSE(p["top"].empty());
  EXPECT_GE(p["top"][0]["calls"].get<int64_t>(), 1);
}

// The progress rate of a synchronous device (the CPU: a step's work is done when it is launched): steps of 30 ms
// recorded in one burst at the end (as before an evaluation, a checkpoint or the last step) still report about
// tokens / 30 ms, not the microseconds between the records; an evaluation between steps is left out.
TEST(Training, StepLogRatesCountTheStepsNotTheRecords) {
  auto dir = scratch_dir("step-log");
  {
    MetricsLog metrics(dir / "metrics.jsonl", -1);
    std::ostringstream out;
    StepLogSettings s;
    s.first_step = 1, s.total_steps = 4, s.log_every = 1;
    StepLog log(s, metrics, out, 0, 0);
    for (int64_t step = 1; step <= 4; ++step) {
      std::this_thread::sleep_for(std::chrono::milliseconds(30));  // the step's work
      log.launched(step, 1e-3, 3000, torch::full({1}, 2.0), torch::full({1}, 1.0));
      if (step == 2) {  // an evaluation of 600 ms after step 2, left out of the rates
        log.settle();
        std::this_thread::sleep_for(std::chrono::milliseconds(600));
        log.exclude(0.6);
      }
    }
    log.settle();
  }
  std::ifstream in(dir / "metrics.jsonl");
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    const json j = json::parse(line);
    ++n;
    EXPECT_GT(j["tok_s"].get<double>(), 3000 / 0.300) << line;  // at most 300 ms per step (a loaded machine)
    EXPECT_LT(j["tok_s"].get<double>(), 3000 / 0.025) << line;  // at least the 30 ms slept
  }
  EXPECT_EQ(n, 4);
}
