// The engine on the CPU: kernel references against dense attention (paged with shuffled pages, split-KV,
// cascade), chunked = unchunked prefill (logits and KV contents), and the scheduler end to end against the
// token-by-token reference model (any budget, page size, prefix sharing, pre-emption, prefill-first).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>

#include "common/error.h"
#include "kernels/reference.h"
#include "serve/cpu_backend.h"
#include "serve/cpu_model.h"
#include "serve/engine.h"
#include "serve/prefix_groups.h"
#include "tests/serve_test_util.h"
#include "tests/test_util.h"

using namespace cw;
using namespace cw::test;

namespace {

// A paged K/V cache of random contents plus the page table of one sequence of LEN tokens (pages shuffled).
struct PagedSeq {
  int page, heads, kv_heads, hd;
  std::vector<float> k, v;
  std::vector<int32_t> pages;
  PagedSeq(int len, int page_, int heads_, int kv_heads_, int hd_, std::mt19937_64& rng)
      : page(page_), heads(heads_), kv_heads(kv_heads_), hd(hd_) {
    const int n_pages = (len + page - 1) / page + 3;
    k = random_vec(size_t(n_pages) * page * kv_heads * hd, rng);
    v = random_vec(size_t(n_pages) * page * kv_heads * hd, rng);
    std::vector<int32_t> all(static_cast<size_t>(n_pages));
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    pages.assign(all.begin(), all.begin() + (len + page - 1) / page);
  }
  const float* at(const std::vector<float>& cache, int t, int kvh) const {
    return cache.data() + ((size_t(pages[size_t(t / page)]) * page + t % page) * kv_heads + kvh) * hd;
  }
};

using Level = serve::LevelArrays;

std::vector<int32_t> oracle_greedy(const serve::Bundle& b, const std::vector<int32_t>& prompt, int n) {
  serve::CpuModel m(b);
  serve::KVCache cache = m.new_cache();
  std::vector<float> logits;
  for (int32_t t : prompt) logits = m.step(t, cache);
  std::vector<int32_t> out;
  for (int i = 0; i < n && int64_t(prompt.size() + out.size()) < b.config.max_seq_len; ++i) {
    int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    out.push_back(next);
    logits = m.step(next, cache);
  }
  return out;
}

}  // namespace

TEST(ServeKernelsRef, PagedAttentionEqualsDenseAttentionForAnyPagesAndSplits) {
  std::mt19937_64 rng(11);
  for (auto [H, Hkv] : std::vector<std::pair<int, int>>{{4, 4}, {4, 2}, {8, 1}})
    for (int page : {1, 16})
      for (int len : {1, page > 1 ? page - 1 : 2, page, page + 1, 77}) {
        const int hd = 32;
        PagedSeq seq(len, page, H, Hkv, hd, rng);
        // Item 0: one decode row at the last position; item 1: a chunk of up to 5 rows ending there.
        const int chunk = std::min(5, len);
        const int rows = 1 + chunk;
        std::vector<int32_t> pos = {len - 1};
        for (int i = 0; i < chunk; ++i) pos.push_back(len - chunk + i);
        Level L;
        L.add(1, seq.pages, len, 0);
        L.add(chunk, seq.pages, len, 0);
        auto q = random_vec(size_t(rows) * H * hd, rng);
        kern::AttnShape S;
        S.rows = rows, S.heads = H, S.kv_heads = Hkv, S.head_dim = hd, S.page_size = page, S.q_stride = H * hd;
        S.scale = float(1 / std::sqrt(double(hd)));
        for (int splits : {1, 2, 7}) {
          std::vector<float> o_part(size_t(splits) * rows * H * hd, NAN), lse_part(size_t(splits) * rows * H, NAN);
          kern::ref::paged_attention(q.data(), pos.data(), L.view(), S, seq.k.data(), seq.v.data(), splits, 0,
                                     o_part.data(), lse_part.data());
          std::vector<float> o(size_t(rows) * H * hd), lse(size_t(rows) * H);
          kern::ref::merge_states(o_part.data(), lse_part.data(), splits, rows, H, hd, o.data(), lse.data());
          for (int r = 0; r < rows; ++r)
            for (int h = 0; h < H; ++h) {
              std::vector<const float*> ks, vs;
              for (int t = 0; t <= pos[size_t(r)]; ++t) ks.push_back(seq.at(seq.k, t, h / (H / Hkv))), vs.push_back(seq.at(seq.v, t, h / (H / Hkv)));
              double want_lse;
              auto want = dense_attention(q.data() + (size_t(r) * H + h) * hd, ks, vs, hd, S.scale, &want_lse);
              std::vector<float> got(o.begin() + (size_t(r) * H + h) * hd, o.begin() + (size_t(r) * H + h + 1) * hd);
              ASSERT_LE(rel_err(got, want), 1e-5) << "H " << H << " Hkv " << Hkv << " page " << page << " len " << len
                                                  << " splits " << splits << " row " << r;
              ASSERT_NEAR(lse[size_t(r) * H + h], want_lse, 1e-4 * std::max(1.0, std::abs(want_lse)));
            }
        }
      }
}

TEST(ServeKernelsRef, CascadeOverPrefixAndSuffixEqualsFlatAttention) {
  std::mt19937_64 rng(12);
  const int H = 8, Hkv = 2, hd = 32, page = 4;
  for (int prefix : {0, 8, 24})
    for (int suffix : {0, 1, 9}) {
      if (prefix + suffix == 0) continue;
      const int len = prefix + suffix;
      PagedSeq seq(len, page, H, Hkv, hd, rng);
      const std::vector<int32_t> pre(seq.pages.begin(), seq.pages.begin() + prefix / page);
      const std::vector<int32_t> suf(seq.pages.begin() + prefix / page, seq.pages.end());
      std::vector<int32_t> pos = {len - 1, len - 1, len - 1};  // three requests' decode rows share the prefix
      auto q = random_vec(size_t(3) * H * hd, rng);
      kern::AttnShape S;
      S.rows = 3, S.heads = H, S.kv_heads = Hkv, S.head_dim = hd, S.page_size = page, S.q_stride = H * hd;
      S.scale = 0.3f;
      Level flat, level0, level1;
      flat.add(3, seq.pages, len, 0);
      level0.add(3, pre, prefix, 0);
      for (int r = 0; r < 3; ++r) level1.add(1, suf, suffix, prefix);
      auto run = [&](std::vector<const Level*> levels, int splits) {
        const int slots = int(levels.size()) * splits;
        std::vector<float> o_part(size_t(slots) * 3 * H * hd, NAN), lse_part(size_t(slots) * 3 * H, NAN);
        for (size_t i = 0; i < levels.size(); ++i)
          kern::ref::paged_attention(q.data(), pos.data(), levels[i]->view(), S, seq.k.data(), seq.v.data(), splits,
                                     int(i) * splits, o_part.data(), lse_part.data());
        std::vector<float> o(size_t(3) * H * hd), lse(size_t(3) * H);
        kern::ref::merge_states(o_part.data(), lse_part.data(), slots, 3, H, hd, o.data(), lse.data());
        o.insert(o.end(), lse.begin(), lse.end());
        return o;
      };
      auto want = run({&flat}, 1);
      for (int splits : {1, 3}) {
        auto got = run({&level0, &level1}, splits);
        for (float x : got) ASSERT_FALSE(std::isnan(x));
        EXPECT_LE(rel_err(got, want), 1e-5) << "prefix " << prefix << " suffix " << suffix << " splits " << splits;
      }
    }
}

TEST(ServeKernelsRef, SamplingKeepsTopKAndTopPAndFollowsTheSoftmax) {
  const std::vector<float> logits = {0.f, 5.f, 4.f, -1.f, 4.5f, 1.f};
  std::map<int, int> counts;
  for (uint64_t i = 0; i < 20000; ++i) {
    kern::SampleParams p;
    p.temperature = 1, p.seed = 3, p.counter = i;
    int32_t a, b;
    kern::ref::sample(logits.data(), 1, 6, &p, &a);
    kern::ref::sample(logits.data(), 1, 6, &p, &b);
    ASSERT_EQ(a, b);  // a pure function of (seed, counter)
    ++counts[a];
    p.top_k = 2;
    kern::ref::sample(logits.data(), 1, 6, &p, &a);
    ASSERT_TRUE(a == 1 || a == 4) << a;
    p.top_k = 0, p.top_p = 0.5f;  // 5.0 alone holds ~0.49 of the mass: the nucleus is {5.0, 4.5}
    kern::ref::sample(logits.data(), 1, 6, &p, &a);
    ASSERT_TRUE(a == 1 || a == 4) << a;
  }
  double z = 0;
  for (float l : logits) z += std::exp(l);
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(counts[i] / 20000.0, std::exp(logits[size_t(i)]) / z, 0.012) << i;
  kern::SampleParams greedy;
  int32_t g;
  kern::ref::sample(logits.data(), 1, 6, &greedy, &g);
  EXPECT_EQ(g, 1);
}

// Prefill of N tokens in chunks of C through hand-made plans over shuffled pages; returns the last logits
// and every cached K/V vector in position order.
static std::pair<std::vector<float>, std::vector<float>> chunked_prefill(const serve::Bundle& b,
                                                                         const std::vector<int32_t>& prompt, int chunk,
                                                                         int page, uint64_t seed) {
  serve::CpuBackendOptions o;
  o.page_size = page, o.num_pages = int(prompt.size()) / page + 4;
  serve::CpuBackend be(b, o);
  std::vector<int32_t> pages(static_cast<size_t>(o.num_pages - 1));
  std::iota(pages.begin(), pages.end(), 1);
  std::mt19937_64 rng(seed);
  std::shuffle(pages.begin(), pages.end(), rng);
  const int N = int(prompt.size());
  std::vector<float> logits;
  for (int begin = 0; begin < N; begin += chunk) {
    const int end = std::min(N, begin + chunk);
    serve::StepPlan plan;
    for (int p = begin; p < end; ++p) {
      plan.tokens.push_back(prompt[size_t(p)]);
      plan.positions.push_back(p);
      plan.slots.push_back(pages[size_t(p / page)] * page + p % page);
    }
    serve::AttnItem it;
    it.q_begin = 0, it.q_end = end - begin, it.kv_len = end;
    it.pages.assign(pages.begin(), pages.begin() + (end + page - 1) / page);
    plan.levels = {{it}};
    plan.sample_rows = {end - begin - 1};
    plan.sample_params = {kern::SampleParams{}};
    be.forward(plan, &logits);
  }
  std::vector<float> kv;
  for (int l = 0; l < b.config.n_layers; ++l)
    for (int p = 0; p < N; ++p)
      for (bool key : {true, false}) {
        auto x = be.cached(key, l, pages[size_t(p / page)] * page + p % page);
        kv.insert(kv.end(), x.begin(), x.end());
      }
  return {logits, kv};
}

TEST(ServeEngineCpu, ChunkedPrefillEqualsUnchunkedPrefill) {
  serve::Bundle b = serve::random_bundle(small_serve_config(4, 2, 16), 5, 0.15f);
  std::mt19937_64 rng(3);
  const auto prompt = random_prompt(70, 512, rng);
  for (int page : {1, 16}) {
    auto [want_logits, want_kv] = chunked_prefill(b, prompt, 70, page, 1);
    for (int chunk : {1, 7, 16, 17, 64}) {
      auto [logits, kv] = chunked_prefill(b, prompt, chunk, page, 100 + chunk);
      EXPECT_LE(rel_err(logits, want_logits), 1e-5) << "chunk " << chunk << " page " << page;
      EXPECT_LE(rel_err(kv, want_kv), 1e-5) << "chunk " << chunk << " page " << page;
    }
  }
}

// Runs REQUESTS through an engine on a fresh CPU backend; returns tokens by request id.
static std::map<int64_t, std::vector<int32_t>> run_engine(const serve::Bundle& b, std::vector<serve::GenRequest> reqs,
                                                          serve::EngineOptions eo, int page, int num_pages,
                                                          int* preemptions = nullptr, int64_t* prefill_rows = nullptr) {
  serve::CpuBackendOptions o;
  o.page_size = page, o.num_pages = num_pages, o.splits = 2;
  serve::CpuBackend be(b, o);
  serve::Engine engine(be, eo);
  engine.submit_batch(std::move(reqs));
  int pre = 0;
  int64_t rows = 0;
  while (!engine.idle()) {
    auto st = engine.step();
    pre += st.preemptions, rows += st.prefill_rows;
  }
  if (preemptions) *preemptions = pre;
  if (prefill_rows) *prefill_rows = rows;
  std::map<int64_t, std::vector<int32_t>> out;
  for (auto& r : engine.take_finished()) out[r.id] = r.tokens;
  return out;
}

TEST(ServeEngineCpu, GreedyOutputsEqualTheReferenceAtAnyBudgetAndPageSize) {
  serve::Bundle b = serve::random_bundle(small_serve_config(4, 2, 16), 6, 0.15f);
  std::mt19937_64 rng(4);
  std::vector<serve::GenRequest> reqs;
  std::map<int64_t, std::vector<int32_t>> want;
  for (int i = 0; i < 5; ++i) {
    serve::GenRequest r;
    r.id = i, r.prompt = random_prompt(3 + 13 * i, 512, rng), r.max_new_tokens = 6 + i;
    want[i] = oracle_greedy(b, r.prompt, r.max_new_tokens);
    reqs.push_back(r);
  }
  for (int page : {1, 16})
    for (int budget : {7, 16, 17, 64, 1000}) {
      serve::EngineOptions eo;
      eo.token_budget = budget;
      EXPECT_EQ(run_engine(b, reqs, eo, page, 400), want) << "page " << page << " budget " << budget;
    }
  serve::EngineOptions prefill_first;
  prefill_first.chunked_prefill = false, prefill_first.token_budget = 32;
  EXPECT_EQ(run_engine(b, reqs, prefill_first, 16, 64), want) << "prefill-first";
}

// The budget moved between steps bounds the next steps' rows, and the tokens stay the reference's.
TEST(ServeEngineCpu, TokenBudgetSetBetweenStepsBoundsTheNextSteps) {
  serve::Bundle b = serve::random_bundle(small_serve_config(4, 2, 16), 7, 0.15f);
  std::mt19937_64 rng(5);
  serve::CpuBackendOptions o;
  o.page_size = 16, o.num_pages = 200;
  serve::CpuBackend be(b, o);
  serve::EngineOptions eo;
  eo.token_budget = 64;
  serve::Engine engine(be, eo);
  std::map<int64_t, std::vector<int32_t>> want;
  for (int i = 0; i < 3; ++i) {
    serve::GenRequest r;
    r.id = i, r.prompt = random_prompt(40, 512, rng), r.max_new_tokens = 5;
    want[i] = oracle_greedy(b, r.prompt, r.max_new_tokens);
    engine.submit(r);
  }
  auto first = engine.step();
  EXPECT_EQ(first.decode_rows + first.prefill_rows, 64);  // the budget given at construction
  engine.set_token_budget(9);
  int steps = 0;
  while (!engine.idle()) {
    auto st = engine.step();
    EXPECT_LE(st.decode_rows + st.prefill_rows, 9) << "step " << steps;
    ++steps;
  }
  EXPECT_GE(steps, (120 - 64) / 9);
  std::map<int64_t, std::vector<int32_t>> got;
  for (auto& r : engine.take_finished()) got[r.id] = r.tokens;
  EXPECT_EQ(got, want);
  EXPECT_THROW(engine.set_token_budget(0), UserError);
}

TEST(ServeEngineCpu, PrefixSharingComputesThePrefixOnceAndChangesNoToken) {
  serve::Bundle b = serve::random_bundle(small_serve_config(4, 2, 16), 7, 0.15f);
  std::mt19937_64 rng(5);
  const auto prefix = random_prompt(40, 512, rng);
  std::vector<serve::GenRequest> reqs;
  for (int i = 0; i < 9; ++i) {
    serve::GenRequest r;
    r.id = i;
    r.prompt = i < 7 ? prefix : random_prompt(20, 512, rng);
    auto suffix = random_prompt(1 + i, 512, rng);
    r.prompt.insert(r.prompt.end(), suffix.begin(), suffix.end());
    r.max_new_tokens = 5 + i % 3;
    reqs.push_back(r);
  }
  serve::EngineOptions off, cascade, flat;
  off.token_budget = cascade.token_budget = flat.token_budget = 24;
  cascade.prefix_sharing = flat.prefix_sharing = true;
  flat.cascade = false;
  int64_t rows_off = 0, rows_on = 0;
  auto want = run_engine(b, reqs, off, 8, 200, nullptr, &rows_off);
  EXPECT_EQ(run_engine(b, reqs, cascade, 8, 200, nullptr, &rows_on), want);
  EXPECT_EQ(run_engine(b, reqs, flat, 8, 200), want);
  EXPECT_EQ(rows_off - rows_on, 6 * 40) << "the 40-token prefix (5 pages of 8) is computed once for 7 requests";
  for (auto& [id, toks] : want) EXPECT_EQ(toks, oracle_greedy(b, reqs[size_t(id)].prompt, reqs[size_t(id)].max_new_tokens));
}

TEST(ServeEngineCpu, PreemptionByRecomputeWhenPagesRunOut) {
  serve::Bundle b = serve::random_bundle(small_serve_config(4, 2, 16), 8, 0.15f);
  std::mt19937_64 rng(6);
  std::vector<serve::GenRequest> reqs;
  std::map<int64_t, std::vector<int32_t>> want;
  for (int i = 0; i < 4; ++i) {
    serve::GenRequest r;
    r.id = i, r.prompt = random_prompt(8, 512, rng), r.max_new_tokens = 16;
    want[i] = oracle_greedy(b, r.prompt, 16);
    reqs.push_back(r);
  }
  int pre = 0;
  serve::EngineOptions eo;
  eo.token_budget = 64;
  EXPECT_EQ(run_engine(b, reqs, eo, 4, 13, &pre), want);  // 12 usable pages of 4 tokens; each request needs 6
  EXPECT_GT(pre, 0);
}

TEST(ServeEngineCpu, BadRequestsAreRefusedWithAReason) {
  serve::Bundle b = serve::random_bundle(small_serve_config(4, 2, 16), 9, 0.15f);
  serve::CpuBackendOptions o;
  o.num_pages = 8;
  serve::CpuBackend be(b, o);
  serve::Engine engine(be, {});
  serve::GenRequest r;
  r.id = 3;
  EXPECT_NE(user_error_of([&] { engine.submit(r); }).find("prompt is empty"), std::string::npos);
  r.prompt = {1, 2, 999};
  EXPECT_NE(user_error_of([&] { engine.submit(r); }).find("outside the vocabulary"), std::string::npos);
  r.prompt.assign(600, 1);
  EXPECT_NE(user_error_of([&] { engine.submit(r); }).find("context is 512"), std::string::npos);
  r.prompt.assign(200, 1);
  EXPECT_NE(user_error_of([&] { engine.submit(r); }).find("KV pages"), std::string::npos);
  EXPECT_TRUE(engine.idle());
}

// Several prompts prefilled in one step (varlen rows, no padding: prepacking) give each prompt the logits it
// gets alone, and changing one prompt leaves the others' logits unchanged.
TEST(ServeEngineCpu, PackedPrefillEqualsEachPromptAlone) {
  serve::Bundle b = serve::random_bundle(small_serve_config(4, 2, 16), 10, 0.15f);
  std::mt19937_64 rng(9);
  std::vector<std::vector<int32_t>> prompts = {random_prompt(13, 512, rng), random_prompt(1, 512, rng), random_prompt(29, 512, rng)};
  auto packed = [&](const std::vector<std::vector<int32_t>>& ps) {
    serve::CpuBackendOptions o;
    o.page_size = 4, o.num_pages = 32;
    serve::CpuBackend be(b, o);
    serve::StepPlan plan;
    int32_t next_page = 1;
    plan.levels.resize(1);
    for (const auto& p : ps) {
      serve::AttnItem it;
      it.q_begin = plan.rows();
      for (size_t k = 0; k < (p.size() + 3) / 4; ++k) it.pages.push_back(next_page++);
      for (size_t t = 0; t < p.size(); ++t) {
        plan.tokens.push_back(p[t]);
        plan.positions.push_back(int32_t(t));
        plan.slots.push_back(it.pages[t / 4] * 4 + int32_t(t % 4));
      }
      it.q_end = plan.rows(), it.kv_len = int32_t(p.size());
      plan.levels[0].push_back(it);
      plan.sample_rows.push_back(plan.rows() - 1);
      plan.sample_params.push_back({});
    }
    std::vector<float> logits;
    be.forward(plan, &logits);
    return logits;
  };
  const auto together = packed(prompts);
  const size_t V = 512;
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto alone = packed({prompts[i]});
    std::vector<float> row(together.begin() + i * V, together.begin() + (i + 1) * V);
    EXPECT_LE(rel_err(row, alone), 1e-6) << "prompt " << i;
  }
  auto changed = prompts;
  changed[1][0] = (changed[1][0] + 1) % 512;
  const auto after = packed(changed);
  for (size_t i : {size_t(0), size_t(2)})
    EXPECT_LE(rel_err(std::vector<float>(after.begin() + i * V, after.begin() + (i + 1) * V),
                      std::vector<float>(together.begin() + i * V, together.begin() + (i + 1) * V)),
              1e-6);
  EXPECT_GT(rel_err(std::vector<float>(after.begin() + V, after.begin() + 2 * V),
                    std::vector<float>(together.begin() + V, together.begin() + 2 * V)),
            1e-3);
}

TEST(ServeEngineCpu, PrefixGroupsShareWholePagesAndOrderByDecodeRatio) {
  std::mt19937_64 rng(12);
  const auto shared = random_prompt(37, 512, rng);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int32_t> max_new;
  for (int i = 0; i < 4; ++i) {  // share 37 tokens -> 32 after page alignment (page 8)
    auto p = shared;
    auto tail = random_prompt(3 + i, 512, rng);
    p.insert(p.end(), tail.begin(), tail.end());
    prompts.push_back(p), max_new.push_back(10 * (i + 1));
  }
  prompts.push_back(random_prompt(20, 512, rng)), max_new.push_back(5);  // shares nothing
  prompts.push_back(std::vector<int32_t>(shared.begin(), shared.begin() + 6)), max_new.push_back(5);  // shorter than a page
  auto groups = serve::group_by_prefix(prompts, max_new, 8);
  int grouped = 0;
  std::vector<int> seen;
  for (auto& g : groups) {
    seen.insert(seen.end(), g.members.begin(), g.members.end());
    if (g.shared_len == 0) {
      EXPECT_EQ(g.members.size(), 1u);
      continue;
    }
    ++grouped;
    EXPECT_EQ(g.shared_len, 32);
    ASSERT_EQ(g.members.size(), 4u);
    for (size_t k = 1; k < g.members.size(); ++k) {  // larger decode/prompt ratio first
      auto ratio = [&](int m) { return double(max_new[size_t(m)]) / double(prompts[size_t(m)].size()); };
      EXPECT_GE(ratio(g.members[k - 1]), ratio(g.members[k]));
    }
  }
  EXPECT_EQ(grouped, 1);
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen, (std::vector<int>{0, 1, 2, 3, 4, 5}));  // every request exactly once
}
