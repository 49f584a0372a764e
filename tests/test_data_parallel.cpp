// Data-parallel training on the CPU (two processes started the torchrun way, TCPStore exchange): the loss of
// every step equals a one-process run with the same global batch, with and without ZeRO-1, checkpoints
// move between world sizes in both directions, and a SIGTERM to one rank stops all of them after one step.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "common/files.h"
#include "common/json.h"
#include "tests/test_util.h"

using namespace cw;
using namespace cw::test;

namespace {

std::vector<double> losses(const fs::path& run) {
  std::vector<double> out;
  std::istringstream in(read_file(run / "metrics.jsonl"));
  for (std::string line; std::getline(in, line);) {
    json j = json::parse(line);
    if (j.contains("loss") && j["loss"].is_number()) out.push_back(j["loss"].get<double>());
  }
  return out;
}

fs::path write_recipe(const fs::path& dir, const std::string& name, int64_t steps) {
  fs::path ini = dir / (name + ".ini");
  write_text(ini, tiny_recipe(dir, name, steps).resolved_ini());
  return ini;
}

// A port the system just reported free (tests run in parallel: fixed ports would collide).
int free_port() {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET, a.sin_addr.s_addr = htonl(INADDR_LOOPBACK), a.sin_port = 0;
  socklen_t len = sizeof a;
  if (s < 0 || ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    throw std::runtime_error("no free port");
  ::close(s);
  return ntohs(a.sin_port);
}

// Runs `chunkwise train INI ARGS` on WORLD ranks (WORLD = 1: plain), returns rank 0's exit code. If rank 0
// fails the others are stopped; a short store timeout keeps a failed start from hanging the suite.
int train_ranks(int world, const fs::path& ini, const std::string& args, std::string* log) {
  const int port = free_port();
  const std::string bin = "CHUNKWISE_DIST_TIMEOUT=60 " + chunkwise_bin() + " train " + ini.string() + " " + args;
  if (world == 1) return run_command(bin, log);
  std::string cmd;
  for (int r = world - 1; r >= 1; --r)
    cmd += "WORLD_SIZE=" + std::to_string(world) + " RANK=" + std::to_string(r) + " LOCAL_RANK=" + std::to_string(r) +
           " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " " + bin + " > " + ini.string() + ".rank" +
           std::to_string(r) + ".log 2>&1 & ";
  cmd += "WORLD_SIZE=" + std::to_string(world) + " RANK=0 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=" +
         std::to_string(port) + " " + bin + "; rc=$?; [ $rc -ne 0 ] && kill $(jobs -p) 2>/dev/null; wait; exit $rc";
  return run_command("bash -c '" + cmd + "'", log);
}

void expect_close(const std::vector<double>& a, const std::vector<double>& b, size_t from, const std::string& what) {
  ASSERT_GE(a.size(), from);
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = from; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-4 * std::abs(b[i])) << what << ", step " << i + 1;
}

}  // namespace

TEST(DataParallel, TwoRanksMatchOneProcessWithAndWithoutZero1) {
  auto dir = scratch_dir("dp-match");
  std::string log;
  ASSERT_EQ(train_ranks(1, write_recipe(dir, "one", 8), "", &log), 0) << log;
  const auto want = losses(dir / "one");
  ASSERT_EQ(want.size(), 8u);
  ASSERT_EQ(train_ranks(2, write_recipe(dir, "two", 8), "", &log), 0) << log;
  expect_close(losses(dir / "two"), want, 0, "2 ranks");
  ASSERT_EQ(train_ranks(2, write_recipe(dir, "zero", 8), "--dist.zero=1 --dist.bucket_mb=0", &log), 0) << log;
  expect_close(losses(dir / "zero"), want, 0, "2 ranks, ZeRO-1, one bucket per parameter");
  // The fused path as well: mixed_linear hands the ranks weight gradients that are views of one product's output.
  ASSERT_EQ(train_ranks(1, write_recipe(dir, "one-fused", 8), "--train.fused_kernels=true", &log), 0) << log;
  ASSERT_EQ(train_ranks(2, write_recipe(dir, "two-fused", 8), "--train.fused_kernels=true --dist.zero=1", &log), 0)
      << log;
  expect_close(losses(dir / "two-fused"), losses(dir / "one-fused"), 0, "2 ranks, fused kernels, ZeRO-1");
  // Rank 1 printed nothing and wrote no files of its own.
  EXPECT_EQ(read_file(dir / "two.ini.rank1.log").find("step 1"), std::string::npos);
  // A batch that does not divide over the ranks is refused.
  EXPECT_NE(train_ranks(2, write_recipe(dir, "odd", 2), "--data.batch_size=3", &log), 0);
  EXPECT_NE(log.find("does not divide"), std::string::npos) << log;
}

TEST(DataParallel, SecoOnTwoRanksMatchesOneProcess) {  // the gradient sync armed before the last chunk's pass
  auto dir = scratch_dir("dp-seco");
  std::string log;
  const std::string seco = "--chunkwise.mode=seco --chunkwise.chunk=8 --train.grad_accum=2";
  ASSERT_EQ(train_ranks(1, write_recipe(dir, "one", 6), seco, &log), 0) << log;
  ASSERT_EQ(losses(dir / "one").size(), 6u);
  ASSERT_EQ(train_ranks(2, write_recipe(dir, "two", 6), seco, &log), 0) << log;
  expect_close(losses(dir / "two"), losses(dir / "one"), 0, "2 ranks, SeCO");
  // SpaCO on two ranks: every rank draws its own chunks, and the run still agrees on every step's loss.
  ASSERT_EQ(train_ranks(2, write_recipe(dir, "spaco", 6), "--chunkwise.mode=spaco --chunkwise.chunk=8 "
                        "--chunkwise.budget=1", &log), 0) << log;
  EXPECT_EQ(losses(dir / "spaco").size(), 6u);
}

TEST(DataParallel, LoraOnTwoRanksMatchesOneProcess) {  // only the adapters are reduced and updated
  auto dir = scratch_dir("dp-lora");
  std::string log;
  const std::string lora = "--lora.rank=4 --lora.targets=q_proj,v_proj,down_proj --optim.lr=1e-2";
  ASSERT_EQ(train_ranks(1, write_recipe(dir, "one", 6), lora, &log), 0) << log;
  ASSERT_EQ(losses(dir / "one").size(), 6u);
  ASSERT_EQ(train_ranks(2, write_recipe(dir, "two", 6), lora + " --dist.zero=1", &log), 0) << log;
  expect_close(losses(dir / "two"), losses(dir / "one"), 0, "2 ranks, LoRA, ZeRO-1");
}

TEST(DataParallel, Bf16AllReduceStaysWithinBf16OfTheFp32Run) {
  auto dir = scratch_dir("dp-bf16");
  std::string log;
  ASSERT_EQ(train_ranks(2, write_recipe(dir, "fp32", 8), "", &log), 0) << log;
  ASSERT_EQ(train_ranks(2, write_recipe(dir, "bf16", 8), "--dist.reduce_dtype=bf16", &log), 0) << log;
  const auto want = losses(dir / "fp32"), got = losses(dir / "bf16");
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(got[0], want[0]);  // the first loss comes before any reduced gradient
  bool differs = false;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], 1e-2 * want[i]) << "step " << i + 1;
    differs = differs || got[i] != want[i];
  }
  EXPECT_TRUE(differs) << "the bf16 reduction gave bit-identical losses: was it used?";
}

TEST(DataParallel, CheckpointsMoveBetweenWorldSizes) {
  auto dir = scratch_dir("dp-resume");
  std::string log;
  ASSERT_EQ(train_ranks(1, write_recipe(dir, "ref", 9), "", &log), 0) << log;
  const auto want = losses(dir / "ref");
  // Two ranks with ZeRO-1 stop after step 6 (its checkpoint), then one process resumes to step 9.
  auto ini = write_recipe(dir, "a", 9);
  ASSERT_EQ(train_ranks(2, ini, "--dist.zero=1 --stop-at=6", &log), 0) << log;
  ASSERT_EQ(train_ranks(1, ini, "--resume", &log), 0) << log;
  expect_close(losses(dir / "a"), want, 0, "2 ranks then 1");
  // One process stops after step 6, then two ranks resume to step 9.
  ini = write_recipe(dir, "b", 9);
  ASSERT_EQ(train_ranks(1, ini, "--stop-at=6", &log), 0) << log;
  ASSERT_EQ(train_ranks(2, ini, "--resume --dist.zero=1", &log), 0) << log;
  expect_close(losses(dir / "b"), want, 0, "1 then 2 ranks");
}

// Started by torchrun itself (its agent serves the rendezvous store; the ranks only connect to it).
TEST(DataParallel, TorchrunStartsTheRanks) {
  auto dir = scratch_dir("dp-torchrun");
  std::string log;
  ASSERT_EQ(train_ranks(1, write_recipe(dir, "one", 4), "", &log), 0) << log;
  const int port = free_port();
  const auto ini = write_recipe(dir, "tr", 4);
  ASSERT_EQ(run_command("CHUNKWISE_DIST_TIMEOUT=60 " + python() + " -m torch.distributed.run --nproc_per_node=2 --master_port=" + std::to_string(port) +
                            " --no-python " + chunkwise_bin() + " train " + ini.string(),
                        &log),
            0)
      << log;
  expect_close(losses(dir / "tr"), losses(dir / "one"), 0, "torchrun, 2 ranks");
}

// SIGTERM to one rank only (rank 1, here once rank 0 has logged a few steps): every rank stops after the same
// step, rank 0 writes the checkpoint of that step, and both exit with 143.
TEST(DataParallel, SigtermToOneRankStopsEveryRankAfterTheSameStep) {
  auto dir = scratch_dir("dp-sigterm");
  const fs::path ini = write_recipe(dir, "long", 1000000), run = dir / "long";
  const std::string bin = chunkwise_bin() + " train " + ini.string() + " --train.ckpt_every=0 --train.eval_every=0";
  const std::string d = dir.string() + "/";
  write_text(dir / "run.sh",
             "export WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(free_port()) +
                 " CHUNKWISE_DIST_TIMEOUT=60\n"
                 "RANK=1 LOCAL_RANK=1 " + bin + " > " + d + "log1 2>&1 & p1=$!\n"
                 "RANK=0 LOCAL_RANK=0 " + bin + " > " + d + "log0 2>&1 & p0=$!\n"
                 "echo $p1 > " + d + "pid1; echo $p0 > " + d + "pid0\n"
                 "wait $p1; echo $? > " + d + "rc1\n"
                 "wait $p0; echo $? > " + d + "rc0.tmp; mv " + d + "rc0.tmp " + d + "rc0\n");
  start_script(dir / "run.sh");
  const bool logging = wait_until([&] { return count_lines(run / "metrics.jsonl") >= 3; }, 120);
  auto pid = [&](const char* f) { return pid_t(std::stol("0" + read_file(dir / f))); };
  const pid_t p1 = pid("pid1"), p0 = pid("pid0");
  auto kill_both = [&] {  // no run of a million steps left behind (a pid of 0 would be our own group)
    for (pid_t p : {p0, p1})
      if (p > 0) ::kill(p, SIGKILL);
  };
  if (!logging || p1 <= 0) kill_both();
  ASSERT_TRUE(logging && p1 > 0) << read_file(dir / "log0") << read_file(dir / "log1");
  ::kill(p1, SIGTERM);
  const bool ended = wait_until([&] { return fs::exists(dir / "rc0"); }, 120);
  if (!ended) kill_both();
  ASSERT_TRUE(ended);
  EXPECT_EQ(std::stoi(read_file(dir / "rc1")), 143) << read_file(dir / "log1");
  EXPECT_EQ(std::stoi(read_file(dir / "rc0")), 143) << read_file(dir / "log0");
  const int64_t last = int64_t(count_lines(run / "metrics.jsonl"));
  EXPECT_NE(read_file(dir / "log0").find("stopped on request after step " + std::to_string(last)), std::string::npos)
      << read_file(dir / "log0");
  const auto ckpts = fs::path(run / "checkpoints");
  EXPECT_TRUE(fs::exists(ckpts / ("step-" + std::to_string(last)) / "manifest.json")) << last;
}
