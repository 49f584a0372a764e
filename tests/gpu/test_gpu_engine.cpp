// GPU tests of the inference engine end to end: the CUDA backend's logits against the CPU backend's, and
// greedy generations that agree across token budgets, CUDA graphs and prefix sharing and with the CPU engine
// (except at near-ties), also with CUTLASS's products forced on every step. Runs only where a GPU is present
// (tools/gpu-run); compiled in CI.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>

#include "kernels/cuda.h"
#include "serve/cpu_backend.h"
#include "serve/cpu_model.h"
#include "serve/cuda_backend.h"
#include "serve/engine.h"
#include "tests/gpu/gpu_test_util.h"

using namespace cw;
using namespace cw::test;

namespace {

serve::StepPlan prefill_plan(const std::vector<std::vector<int32_t>>& prompts, int page, int first_page) {
  serve::StepPlan plan;
  int next_page = first_page;
  for (const auto& pr : prompts) {
    serve::AttnItem it;
    it.q_begin = plan.rows();
    const int n = int(pr.size());
    for (int p = 0; p < (n + page - 1) / page; ++p) it.pages.push_back(next_page++);
    for (int p = 0; p < n; ++p) {
      plan.tokens.push_back(pr[size_t(p)]);
      plan.positions.push_back(p);
      plan.slots.push_back(it.pages[size_t(p / page)] * page + p % page);
      plan.sample_rows.push_back(plan.rows() - 1);
      plan.sample_params.push_back({});
    }
    it.q_end = plan.rows(), it.kv_len = n;
    if (plan.levels.empty()) plan.levels.resize(1);
    plan.levels[0].push_back(it);
  }
  return plan;
}

// Greedy token lists A and B agree, or first differ where the reference's top two logits are a near-tie.
::testing::AssertionResult same_or_near_tie(const serve::Bundle& b, const std::vector<int32_t>& prompt,
                                            const std::vector<int32_t>& a, const std::vector<int32_t>& c) {
  size_t i = 0;
  while (i < a.size() && i < c.size() && a[i] == c[i]) ++i;
  if (i == a.size() && i == c.size()) return ::testing::AssertionSuccess();
  if (i == a.size() || i == c.size()) return ::testing::AssertionFailure() << "lengths differ";
  serve::CpuModel m(b);
  auto cache = m.new_cache();
  std::vector<float> logits;
  for (int32_t t : prompt) logits = m.step(t, cache);
  for (size_t j = 0; j < i; ++j) logits = m.step(a[j], cache);
  const float hi = *std::max_element(logits.begin(), logits.end()), lo = *std::min_element(logits.begin(), logits.end());
  const float gap = std::abs(logits[size_t(a[i])] - logits[size_t(c[i])]);
  if (gap <= 0.02f * (hi - lo)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "token " << i << " differs (" << a[i] << " vs " << c[i] << ") with a logit gap of "
                                       << gap << " of a range " << (hi - lo);
}

// Ten requests, eight of them sharing a 48-token prefix, twelve new tokens each.
std::vector<serve::GenRequest> greedy_requests(std::mt19937_64& rng) {
  const auto prefix = random_prompt(48, 512, rng);
  std::vector<serve::GenRequest> reqs;
  for (int i = 0; i < 10; ++i) {
    serve::GenRequest r;
    r.id = i;
    r.prompt = i < 8 ? prefix : std::vector<int32_t>{};
    auto tail = random_prompt(2 + 3 * i, 512, rng);
    r.prompt.insert(r.prompt.end(), tail.begin(), tail.end());
    r.max_new_tokens = 12;
    reqs.push_back(r);
  }
  return reqs;
}

std::map<int64_t, std::vector<int32_t>> greedy_tokens(serve::Backend& be, const serve::EngineOptions& eo,
                                                      const std::vector<serve::GenRequest>& reqs) {
  serve::Engine e(be, eo);
  e.submit_batch(reqs);
  std::map<int64_t, std::vector<int32_t>> out;
  for (auto& r : e.run()) out[r.id] = r.tokens;
  return out;
}

struct ScopedEnv {  // NAME=VALUE for the scope's lifetime
  std::string name;
  ScopedEnv(const char* n, const std::string& value) : name(n) { setenv(n, value.c_str(), 1); }
  ~ScopedEnv() { unsetenv(name.c_str()); }
};

}  // namespace

TEST(GpuEngine, CudaLogitsMatchTheCpuBackendAtEveryPosition) {
  serve::Bundle b = bf16_bundle(small_serve_config(4, 2, 64), 31);
  std::mt19937_64 rng(25);
  std::vector<std::vector<int32_t>> prompts = {random_prompt(37, 512, rng), random_prompt(5, 512, rng), random_prompt(70, 512, rng)};
  serve::CpuBackendOptions co;
  co.num_pages = 40, co.round_like_cuda = true;  // the same bf16 roundings as the GPU, in fp32 arithmetic
  serve::CudaBackendOptions go;
  go.num_pages = 40, go.max_tokens = 256;
  serve::CpuBackend cpu(b, co);
  serve::CudaBackend gpu(b, go);
  auto plan = prefill_plan(prompts, 16, 1);
  std::vector<float> want, got;
  cpu.forward(plan, &want);
  gpu.forward(plan, &got);
  EXPECT_LE(rel_err(got, want), 1e-2);
  // KV contents too.
  for (int slot : {16, 17, 40, 100})
    for (bool key : {true, false}) EXPECT_LE(rel_err(gpu.cached(key, 1, slot), cpu.cached(key, 1, slot)), 1e-2);
}

TEST(GpuEngine, GreedyAgreesAcrossBudgetsGraphsSharingAndWithTheCpu) {
  serve::Bundle b = bf16_bundle(small_serve_config(8, 2, 64), 32);
  std::mt19937_64 rng(26);
  const std::vector<serve::GenRequest> reqs = greedy_requests(rng);
  auto run = [&](serve::Backend& be, serve::EngineOptions eo) { return greedy_tokens(be, eo, reqs); };
  serve::CpuBackendOptions co;
  co.num_pages = 200;
  serve::CpuBackend cpu(b, co);
  auto want = run(cpu, {});
  struct Variant { const char* name; int budget; bool graphs, sharing, cascade, mixed_graphs = false; };
  for (Variant v : {Variant{"budget 512, graphs", 512, true, false, true}, Variant{"budget 7, graphs", 7, true, false, true},
                    Variant{"budget 64, no graphs", 64, false, false, true}, Variant{"sharing + cascade", 64, true, true, true},
                    Variant{"sharing, flat", 17, true, true, false},
                    Variant{"budget 24, padded mixed-step graphs", 24, true, false, true, true},
                    Variant{"sharing, flat, padded mixed-step graphs", 17, true, true, false, true}}) {
    serve::CudaBackendOptions go;
    go.num_pages = 200, go.max_tokens = 512, go.cuda_graphs = v.graphs, go.graph_mixed_steps = v.mixed_graphs;
    serve::CudaBackend gpu(b, go);
    serve::EngineOptions eo;
    eo.token_budget = v.budget, eo.prefix_sharing = v.sharing, eo.cascade = v.cascade;
    auto got = run(gpu, eo);
    ASSERT_EQ(got.size(), want.size());
    for (auto& [id, toks] : want) {
      EXPECT_TRUE(same_or_near_tie(b, reqs[size_t(id)].prompt, toks, got[id])) << v.name << ", request " << id;
    }
    if (v.graphs && !v.sharing) {
      EXPECT_GT(gpu.graphs_captured(), 0) << v.name;
    }
    if (v.budget >= 64 && !v.sharing) {  // decode steps of up to 10 rows: RoPE and the KV append in the attention
      EXPECT_GT(gpu.rope_in_attention_steps(), 0) << v.name;
    }
  }
}

// Each CUTLASS configuration forced on every product of more than four rows (CHUNKWISE_GEMM_CUTLASS_FORCE), in
// eager steps and in steps replayed from CUDA graphs (padded mixed steps too, so the products' set-up is
// captured): the CPU engine's greedy tokens (except at near-ties).
TEST(GpuEngine, GreedyAgreesWithTheCpuOnCutlassProducts) {
  if (kern::cuda::gemm_cutlass_configs() == 0) GTEST_SKIP() << "built without the CUTLASS headers";
  serve::Bundle b = bf16_bundle(small_serve_config(8, 2, 64), 32);
  std::mt19937_64 rng(26);
  const std::vector<serve::GenRequest> reqs = greedy_requests(rng);
  serve::CpuBackendOptions co;
  co.num_pages = 200;
  serve::CpuBackend cpu(b, co);
  const auto want = greedy_tokens(cpu, {}, reqs);
  for (int c = 0; c < kern::cuda::gemm_cutlass_configs(); ++c) {
    const ScopedEnv force("CHUNKWISE_GEMM_CUTLASS_FORCE", std::to_string(c));
    for (bool graphs : {false, true}) {
      serve::CudaBackendOptions go;
      go.num_pages = 200, go.max_tokens = 512, go.cuda_graphs = graphs, go.graph_mixed_steps = graphs;
      serve::CudaBackend gpu(b, go);
      serve::EngineOptions eo;
      eo.token_budget = 24;
      auto got = greedy_tokens(gpu, eo, reqs);
      ASSERT_EQ(got.size(), want.size());
      EXPECT_NE(gpu.tuning_summary().find("forced"), std::string::npos) << gpu.tuning_summary();
      for (auto& [id, toks] : want)
        EXPECT_TRUE(same_or_near_tie(b, reqs[size_t(id)].prompt, toks, got[id]))
            << kern::cuda::gemm_cutlass_name(c) << (graphs ? ", graphs" : ", eager") << ", request " << id;
    }
  }
}

// Steps of one launch shape with different contents (tokens, positions, KV lengths): the graph-enabled
// backend captures the shape on its second sight and replays it; the tokens drawn equal those of eager steps.
TEST(GpuEngine, MixedStepsReplayedFromAGraphEqualEagerSteps) {
  serve::Bundle b = bf16_bundle(small_serve_config(8, 2, 64), 33);
  const int page = 16, pages_per_seq = 4, decodes = 3, chunk = 9;
  serve::StepPlan plan;
  auto item = [&](int seq, int rows, int kv_len, int salt) {  // sequence seq lives on its own 4 pages
    serve::AttnItem it;
    it.q_begin = plan.rows();
    for (int p = 0; p < (kv_len + page - 1) / page; ++p) it.pages.push_back(1 + pages_per_seq * seq + p);
    for (int r = 0; r < rows; ++r) {
      const int pos = kv_len - rows + r;
      plan.tokens.push_back((pos * 131 + r * 7 + salt * 29) % 512);
      plan.positions.push_back(pos);
      plan.slots.push_back(it.pages[size_t(pos / page)] * page + pos % page);
    }
    it.q_end = plan.rows(), it.kv_len = kv_len;
    plan.sample_rows.push_back(plan.rows() - 1), plan.sample_params.push_back({});
    plan.levels[0].push_back(it);
  };
  auto start = [&] { plan = serve::StepPlan{}, plan.levels.resize(1); };
  serve::CudaBackendOptions go;
  go.num_pages = 1 + pages_per_seq * (decodes + 1), go.max_tokens = 64, go.graph_mixed_steps = true;
  serve::CudaBackendOptions eager_opt = go;
  eager_opt.cuda_graphs = false;
  serve::CudaBackend graphed(b, go), eager(b, eager_opt);
  for (int seq = 0; seq <= decodes; ++seq) {  // every slot the steps read is written first
    start(), item(seq, pages_per_seq * page, pages_per_seq * page, 0);
    EXPECT_EQ(graphed.forward(plan, nullptr), eager.forward(plan, nullptr)) << "filling sequence " << seq;
  }
  for (int step = 0; step < 6; ++step) {  // 3 decode rows and a 9-row chunk
    start();
    for (int d = 0; d < decodes; ++d) item(d, 1, 20 + 5 * d + step, step);
    item(decodes, chunk, 30 + 3 * step, step);
    EXPECT_EQ(graphed.forward(plan, nullptr), eager.forward(plan, nullptr)) << "step " << step;
  }
  EXPECT_EQ(graphed.graphs_captured(), 2);  // the filling steps' shape and the mixed steps' shape
  EXPECT_EQ(eager.graphs_captured(), 0);
}

