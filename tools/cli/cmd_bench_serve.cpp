// `chunkwise bench serve`: the inference engine on a TinyLlama-shaped model with random bf16 weights
// (../shared/specs/serving.md §4), in the four scenarios of the engine issue: batch-1 decode against the
// card's copy bandwidth, batch 64, 256 requests sharing a 1,024-token prefix with sharing on and off, and
// long prompts arriving while 32 sequences decode (chunked prefill vs prefill-first vs decode only).
// Prints one JSON line per measurement; run beside torch_baselines.py infer for HF's figures.
#include <algorithm>
#include <chrono>
#include <iostream>
#include <map>
#include <random>
#include <set>

#include "serve/random_bundle.h"
#include "tools/cli/commands.h"
#include "tools/cli/serve_setup.h"
#ifdef CHUNKWISE_SERVE_CUDA
#include "serve/cuda_backend.h"
#endif

namespace cw::cli {

namespace {

struct Sizes {  // the sizes, or --quick ones for a CPU smoke run
  int prompt = 128, new_tokens = 256, batch = 64, prefix_reqs = 256, prefix_len = 1024, suffix = 64, prefix_new = 64;
  int decoders = 32, decoder_new = 512, long_prompts = 8, long_len = 1536, long_new = 16, arrival_every = 40;
};

std::vector<serve::GenRequest> requests(int n, int prompt, int new_tokens, int vocab, uint64_t seed,
                                        const std::vector<int32_t>& prefix = {}) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> u(0, vocab - 1);
  std::vector<serve::GenRequest> out;
  for (int i = 0; i < n; ++i) {
    serve::GenRequest r;
    r.id = i, r.prompt = prefix, r.max_new_tokens = new_tokens;
    for (int t = 0; t < prompt; ++t) r.prompt.push_back(u(rng));
    out.push_back(std::move(r));
  }
  return out;
}

struct RunResult {
  double seconds = 0;
  int64_t prompt_tokens = 0, new_tokens = 0;
  std::vector<serve::GenResult> results;
};

RunResult run_batch(serve::Backend& be, serve::EngineOptions eo, std::vector<serve::GenRequest> reqs) {
  RunResult r;
  for (auto& q : reqs) r.prompt_tokens += int64_t(q.prompt.size());
  serve::Engine engine(be, eo);
  const auto t0 = std::chrono::steady_clock::now();
  engine.submit_batch(std::move(reqs));
  r.results = engine.run();
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (auto& x : r.results) r.new_tokens += int64_t(x.tokens.size());
  return r;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p * double(v.size() - 1) + 0.5))];
}
double median(std::vector<double> v) {  // the mean of the middle two for an even count
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Long prompts arriving every few iterations while the decoders decode; inter-token gaps of the decoders.
// Warm start (the scenario, the default): the decoders' own prompts are prefilled before the clock
// starts, at the backend's largest budget in every mode, so that each mode starts from the same 32 sequences
// decoding in step; the window counts the tokens generated in it and the long prompts. Cold start
// (--mixed-cold-start, the figures before 2026-12-03's fifth part): the decoders' prompts are prefilled inside
// the window at the run's own budget (32 prompts of 128 take 32 iterations at budget 128, 2 at 2,048).
struct MixedResult {
  double seconds = 0, p50_tbt = 0, p99_tbt = 0, max_tbt = 0, tok_s = 0;
  int iterations = 0;
};
MixedResult run_mixed(serve::Backend& be, serve::EngineOptions eo, const Sizes& z, bool with_long, int vocab,
                      bool cold_start) {
  serve::Engine engine(be, eo);
  auto decoders = requests(z.decoders, z.prompt, z.decoder_new, vocab, 5);
  auto longs = requests(z.long_prompts, z.long_len, z.long_new, vocab, 6);
  for (auto& r : longs) r.id += 1000;
  int64_t tokens = 0;
  for (auto& r : decoders) engine.submit(r);
  std::vector<serve::GenResult> done;
  if (!cold_start) {  // until every decoder has its first token
    engine.set_token_budget(be.max_tokens());
    std::set<int64_t> started;
    while (int(started.size()) < z.decoders && !engine.idle())
      engine.step([&](int64_t id, int32_t) { started.insert(id); });
    for (auto& r : engine.take_finished()) done.push_back(std::move(r));
    engine.set_token_budget(eo.token_budget);
  } else {
    for (auto& r : decoders) tokens += int64_t(r.prompt.size());
  }
  const double t0 = engine.now();
  size_t next_long = 0;
  MixedResult m;
  while (!engine.idle() || (with_long && next_long < longs.size())) {
    if (with_long && next_long < longs.size() && m.iterations == int(20 + next_long * size_t(z.arrival_every))) {
      tokens += int64_t(longs[next_long].prompt.size());
      engine.submit(longs[next_long++]);
    }
    engine.step();
    ++m.iterations;
    for (auto& r : engine.take_finished()) done.push_back(std::move(r));
  }
  m.seconds = engine.now() - t0;
  std::vector<double> gaps;
  for (auto& r : done) {
    const auto& tt = r.token_times;
    tokens += std::count_if(tt.begin(), tt.end(), [&](double t) { return t >= t0; });
    if (r.id >= 1000) continue;
    for (size_t i = 1; i < tt.size(); ++i)
      if (tt[i - 1] >= t0) gaps.push_back(tt[i] - tt[i - 1]);
  }
  m.p50_tbt = percentile(gaps, 0.5), m.p99_tbt = percentile(gaps, 0.99);
  m.max_tbt = gaps.empty() ? 0 : *std::max_element(gaps.begin(), gaps.end());
  m.tok_s = double(tokens) / m.seconds;
  return m;
}

// A step of B decode rows at context L, plus (optionally) one prefill chunk of C rows ending at context P.
serve::StepPlan synthetic_plan(int B, int L, int C, int P, int page, int vocab) {
  serve::StepPlan plan;
  int next_page = 1;
  auto item = [&](int rows, int kv_len, bool sample_last) {
    serve::AttnItem it;
    it.q_begin = plan.rows();
    for (int p = 0; p < (kv_len + page - 1) / page; ++p) it.pages.push_back(next_page++);
    for (int r = 0; r < rows; ++r) {
      const int pos = kv_len - rows + r;
      plan.tokens.push_back((pos * 7919 + r) % vocab);
      plan.positions.push_back(pos);
      plan.slots.push_back(it.pages[size_t(pos / page)] * page + pos % page);
    }
    it.q_end = plan.rows(), it.kv_len = kv_len;
    if (sample_last) plan.sample_rows.push_back(plan.rows() - 1), plan.sample_params.push_back({});
    plan.levels[0].push_back(it);
  };
  plan.levels.resize(1);
  for (int b = 0; b < B; ++b) item(1, L, true);
  if (C > 0) item(C, P, false);
  return plan;
}

}  // namespace

int bench_serve_main(const Args& args) {
  po::options_description desc("bench serve options");
  std::string scenario, config, profile_case;
  bool quick = false, cold_start = false;
  int mixed_rounds = 1;
  std::vector<int> budgets;
  EngineFlags flags;
  desc.add_options()("scenario", po::value(&scenario)->default_value("all"), "all | batch1 | batch64 | prefix | mixed | profile (CUDA: time per operation)")(
      "config", po::value(&config)->default_value("tinyllama"), "tinyllama | tiny (d 256, 2 layers: smoke runs)")(
      "quick", po::bool_switch(&quick), "small request counts and lengths (CPU smoke run)")(
      "mixed-budget", po::value(&budgets)->multitoken()->default_value(std::vector<int>{128, 192, 256}, "128 192 256"),
      "token budgets of the chunked-prefill runs in `mixed` (one run each)")(
      "mixed-cold-start", po::bool_switch(&cold_start),
      "`mixed`: prefill the decoders' own prompts inside the timed window at each run's budget")(
      "mixed-rounds", po::value(&mixed_rounds)->default_value(1),
      "`mixed`: repeat the decode-only, prefill-first and chunked runs this many times; with more than one, a "
      "summary line per budget gives the median ratios and the rounds that met both targets")(
      "profile-case", po::value(&profile_case)->default_value(""),
      "`profile`: only the steps whose name contains this (e.g. mixed, decode-b64)");
  flags.add_to(desc);
  po::positional_options_description pos;
  po::variables_map vm;
  if (!parse_args(args, desc, pos, vm, "chunkwise bench serve [--scenario all] [--device cuda] [--quick]")) return 0;
  flags.finish();
  check(config == "tinyllama" || config == "tiny", "--config ", config, ": use tinyllama or tiny");
  ModelConfig c = serve::tinyllama_config();
  if (config == "tiny") c.d_model = 256, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.d_ff = 512, c.vocab_size = 2048;
  Sizes z;
  if (quick) {
    z.prompt = 16, z.new_tokens = 16, z.batch = 8, z.prefix_reqs = 16, z.prefix_len = 128, z.suffix = 8, z.prefix_new = 8;
    z.decoders = 4, z.decoder_new = 48, z.long_prompts = 2, z.long_len = 200, z.long_new = 4, z.arrival_every = 10;
  }
  auto t_build = std::chrono::steady_clock::now();
  serve::Bundle bundle = serve::random_bundle(c, 1);
  auto backend = make_backend(bundle, flags);
  bundle.weights.clear();
  const int V = int(c.vocab_size);
  std::string card = backend->name();
  double copy_bw = 0, weight_bytes = 0;
#ifdef CHUNKWISE_SERVE_CUDA
  if (auto* cb = dynamic_cast<serve::CudaBackend*>(backend.get())) {
    card = cb->device_name();
    copy_bw = serve::CudaBackend::copy_bandwidth(size_t(1) << 30);
    weight_bytes = cb->weight_bytes();
    std::cerr << "bench serve: " << cb->tuning_summary() << "\n";
    std::cout << cb->tuning_table_jsonl();
  }
#endif
  std::cerr << "bench serve: " << config << " on " << card << ", " << backend->num_pages() << " KV pages, built in "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - t_build).count() << " s\n";
  std::cout << "{\"bench\": \"serve-setup\", \"card\": \"" << card << "\", \"config\": \"" << config
            << "\", \"weight_bytes\": " << weight_bytes << ", \"copy_bandwidth_gbs\": " << copy_bw / 1e9 << "}\n";
  auto want = [&](const char* s) { return scenario == "all" || scenario == s; };
  serve::EngineOptions base = flags.engine;

  for (int B : {1, z.batch}) {
    if (!want(B == 1 ? "batch1" : "batch64")) continue;
    run_batch(*backend, base, requests(B, z.prompt, 8, V, 2));  // warm-up (captures the decode graphs)
    RunResult r = run_batch(*backend, base, requests(B, z.prompt, z.new_tokens, V, 3));
    double decode_tok_s = 0;
    if (B == 1 && r.results[0].token_times.size() > 1) {
      auto& tt = r.results[0].token_times;
      decode_tok_s = double(tt.size() - 1) / (tt.back() - tt.front());
    }
    std::cout << "{\"bench\": \"serve-batch\", \"card\": \"" << card << "\", \"batch\": " << B << ", \"prompt\": " << z.prompt
              << ", \"new\": " << z.new_tokens << ", \"seconds\": " << r.seconds
              << ", \"new_tok_s\": " << double(r.new_tokens) / r.seconds;
    if (B == 1) {
      std::cout << ", \"decode_tok_s\": " << decode_tok_s;
      if (copy_bw > 0) std::cout << ", \"weight_bandwidth_fraction\": " << decode_tok_s * weight_bytes / copy_bw;
    }
    std::cout << "}\n" << std::flush;
  }
#ifdef CHUNKWISE_SERVE_CUDA
  if (scenario == "profile")
    if (auto* cb = dynamic_cast<serve::CudaBackend*>(backend.get())) {
      struct Case { const char* name; int B, L, C, P; };
      for (Case k : {Case{"decode-b1-ctx256", 1, 256, 0, 0}, Case{"decode-b64-ctx256", 64, 256, 0, 0},
                     Case{"decode-b32-ctx512", 32, 512, 0, 0}, Case{"decode-b16-ctx1024", 16, 1024, 0, 0},
                     Case{"decode-b8-ctx2048", 8, 2048, 0, 0}, Case{"mixed-b32-chunk96-ctx1024", 32, 512, 96, 1024},
                     Case{"prefill-chunk2048", 0, 0, 2048, 2048}}) {
        if (std::string(k.name).find(profile_case) == std::string::npos) continue;
        auto p = cb->profile(synthetic_plan(k.B, k.L, k.C, k.P, flags.page_size, V), 20);
        std::cout << "{\"bench\": \"serve-profile\", \"card\": \"" << card << "\", \"step\": \"" << k.name
                  << "\", \"forward_ms\": " << p.forward_ms << ", \"graph_ms\": " << p.graph_ms
                  << ", \"ops_total_ms\": " << p.ops_total_ms << ", \"ops_ms\": {";
        for (size_t i = 0; i < p.ops.size(); ++i) std::cout << (i ? ", " : "") << "\"" << p.ops[i].first << "\": " << p.ops[i].second;
        std::cout << "}}\n" << std::flush;
      }
    }
#endif
  if (want("prefix")) {
    std::mt19937_64 rng(4);
    std::vector<int32_t> prefix(static_cast<size_t>(z.prefix_len));
    for (auto& t : prefix) t = int32_t(rng() % uint64_t(V));
    std::map<std::string, double> tok_s;
    for (std::string mode : {"off", "on"}) {
      serve::EngineOptions eo = base;
      eo.prefix_sharing = mode == "on", eo.cascade = true;
      run_batch(*backend, eo, requests(8, z.suffix, 4, V, 7, prefix));  // warm-up
      RunResult r = run_batch(*backend, eo, requests(z.prefix_reqs, z.suffix, z.prefix_new, V, 8, prefix));
      tok_s[mode] = double(r.new_tokens) / r.seconds;
      std::cout << "{\"bench\": \"serve-prefix\", \"card\": \"" << card << "\", \"sharing\": \"" << mode
                << "\", \"requests\": " << z.prefix_reqs << ", \"prefix\": " << z.prefix_len << ", \"suffix\": " << z.suffix
                << ", \"new\": " << z.prefix_new << ", \"seconds\": " << r.seconds << ", \"new_tok_s\": " << tok_s[mode]
                << ", \"requests_s\": " << double(z.prefix_reqs) / r.seconds << "}\n" << std::flush;
    }
    std::cout << "{\"bench\": \"serve-prefix-ratio\", \"card\": \"" << card << "\", \"speedup\": " << tok_s["on"] / tok_s["off"] << "}\n";
  }
  if (want("mixed")) {
    for (int b : budgets) check(b >= 1, "--mixed-budget: budgets must be positive");
    check(!budgets.empty(), "--mixed-budget: give at least one budget");
    serve::EngineOptions decode_only = base, prefill_first = base;
    prefill_first.chunked_prefill = false, prefill_first.token_budget = backend->max_tokens();
    auto chunked = [&](int budget) {
      serve::EngineOptions o = base;
      o.token_budget = budget, o.chunked_prefill = true;
      return o;
    };
    check(mixed_rounds >= 1, "--mixed-rounds: give at least one round");
    run_mixed(*backend, chunked(budgets[0]), z, true, V, cold_start);  // warm-up
    const char* start = cold_start ? "cold" : "warm";
    std::map<int, std::vector<std::pair<double, double>>> ratios;  // budget -> per round (p99, throughput)
    for (int round = 1; round <= mixed_rounds; ++round) {
      const MixedResult d = run_mixed(*backend, decode_only, z, false, V, cold_start);
      const MixedResult pf = run_mixed(*backend, prefill_first, z, true, V, cold_start);
      auto print = [&](const std::string& name, int budget, const MixedResult& m) {
        std::cout << "{\"bench\": \"serve-mixed\", \"card\": \"" << card << "\", \"round\": " << round << ", \"mode\": \""
                  << name << "\", \"decoders\": " << z.decoders << ", \"long_prompts\": "
                  << (name == "decode-only" ? 0 : z.long_prompts) << ", \"long_len\": " << z.long_len
                  << ", \"start\": \"" << start << "\", \"budget\": " << budget << ", \"seconds\": " << m.seconds
                  << ", \"iterations\": " << m.iterations << ", \"p50_tbt_ms\": " << m.p50_tbt * 1e3
                  << ", \"p99_tbt_ms\": " << m.p99_tbt * 1e3 << ", \"max_tbt_ms\": " << m.max_tbt * 1e3
                  << ", \"tok_s\": " << m.tok_s << "}\n";
      };
      print("decode-only", base.token_budget, d);
      print("prefill-first", backend->max_tokens(), pf);
      for (int budget : budgets) {
        const MixedResult ch = run_mixed(*backend, chunked(budget), z, true, V, cold_start);
        print("chunked", budget, ch);
        const auto [p99, thr] = ratios[budget].emplace_back(ch.p99_tbt / d.p99_tbt, ch.tok_s / pf.tok_s);
        std::cout << "{\"bench\": \"serve-mixed-ratio\", \"card\": \"" << card << "\", \"round\": " << round
                  << ", \"start\": \"" << start << "\", \"budget\": " << budget
                  << ", \"p99_chunked_over_decode_only\": " << p99
                  << ", \"p99_prefill_first_over_decode_only\": " << pf.p99_tbt / d.p99_tbt
                  << ", \"throughput_chunked_over_prefill_first\": " << thr << "}\n" << std::flush;
      }
    }
    if (mixed_rounds > 1)  // the targets: p99 <= 1.5 x decode-only and throughput >= 1 x prefill-first
      for (const auto& [budget, rs] : ratios) {
        std::vector<double> p99, thr;
        int met = 0;
        for (auto [p, t] : rs) p99.push_back(p), thr.push_back(t), met += p <= 1.5 && t >= 1.0;
        std::cout << "{\"bench\": \"serve-mixed-summary\", \"card\": \"" << card << "\", \"start\": \"" << start
                  << "\", \"budget\": " << budget << ", \"rounds\": " << rs.size()
                  << ", \"median_p99_chunked_over_decode_only\": " << median(p99)
                  << ", \"median_throughput_chunked_over_prefill_first\": " << median(thr)
                  << ", \"rounds_meeting_both\": " << met << "}\n" << std::flush;
      }
  }
  return 0;
}

}  // namespace cw::cli
