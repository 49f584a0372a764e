// The engine's CPU reference (serve/, no LibTorch) against the LibTorch model: logits at every position
// of a sequence fed token by token through the KV cache, and greedy generation token for token.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

#include "checkpoints/hf_bundle.h"
#include "checkpoints/tensor_io.h"
#include "common/files.h"
#include "common/error.h"
#include "common/json.h"
#include "data/tokenizer.h"
#include "models/generate.h"
#include "models/llama.h"
#include "serve/cpu_model.h"
#include "tests/test_util.h"

using namespace cw;
using namespace cw::test;

static std::shared_ptr<Llama> random_model(const fs::path& bundle, bool tie) {
  ModelConfig c;
  c.vocab_size = 400, c.d_model = 48, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.d_ff = 96, c.max_seq_len = 64;
  c.tie_embeddings = tie;
  torch::manual_seed(21);
  auto model = std::make_shared<Llama>(c);
  {
    torch::NoGradGuard ng;
    for (auto& p : model->parameters()) p.normal_(0, 0.15);
  }
  std::map<std::string, torch::Tensor> w;
  for (auto& [n, t] : named_parameters_of(*model)) w[n] = t.detach();
  ExportOptions o;
  o.dtype = "fp32";
  export_bundle(w, c, shared_tokenizer(), bundle, o);
  return model;
}

TEST(ServeCpu, KvCachedLogitsEqualTheFullSequenceForward) {
  for (bool tie : {false, true}) {
    auto dir = scratch_dir(tie ? "serve-cpu-tied" : "serve-cpu");
    auto model = random_model(dir / "bundle", tie);
    serve::Bundle b = serve::load_bundle(dir / "bundle");
    serve::CpuModel engine(b);
    auto ids = torch::randint(0, 400, {1, 20}, torch::kInt64);
    torch::Tensor ref;
    {
      torch::NoGradGuard ng;
      ref = model->logits(ids, torch::arange(20, torch::kInt64).unsqueeze(0), {})[0];
    }
    serve::KVCache cache = engine.new_cache();
    for (int64_t t = 0; t < 20; ++t) {
      auto logits = engine.step(int32_t(ids[0][t].item<int64_t>()), cache);
      auto got = torch::from_blob(logits.data(), {400}, torch::kFloat32).clone();
      double err = (got - ref[t]).abs().max().item<double>() / ref[t].abs().max().item<double>();
      EXPECT_LE(err, 1e-4) << "position " << t << (tie ? " (tied)" : "");
    }
  }
}

TEST(ServeCpu, GreedyGenerationMatchesTheLibTorchModel) {
  auto dir = scratch_dir("serve-greedy");
  auto model = random_model(dir / "bundle", false);
  serve::Bundle b = serve::load_bundle(dir / "bundle");
  serve::CpuModel engine(b);
  std::vector<int64_t> prompt = {5, 17, 99, 250, 3};
  GenerateOptions g;
  g.temperature = 0, g.max_new_tokens = 12;
  auto want = generate(*model, prompt, g);
  serve::KVCache cache = engine.new_cache();
  std::vector<float> logits;
  for (int64_t t : prompt) logits = engine.step(int32_t(t), cache);
  std::vector<int64_t> got;
  std::mt19937_64 rng(1);
  for (int i = 0; i < 12; ++i) {
    int32_t next = serve::sample_token(logits, {}, rng);
    got.push_back(next);
    logits = engine.step(next, cache);
  }
  EXPECT_EQ(got, want);
}

TEST(ServeCpu, SamplingRespectsTopKAndIsSeeded) {
  std::vector<float> logits = {0.f, 5.f, 4.f, -1.f, 4.5f};
  std::mt19937_64 a(7), b(7);
  serve::SamplingOptions o;
  o.temperature = 1.0, o.top_k = 2;
  for (int i = 0; i < 200; ++i) {
    int32_t x = serve::sample_token(logits, o, a);
    EXPECT_TRUE(x == 1 || x == 4) << x;
    EXPECT_EQ(x, serve::sample_token(logits, o, b));
  }
  o.top_k = 0, o.top_p = 0.01;  // the nucleus holds only the most likely token
  EXPECT_EQ(serve::sample_token(logits, o, a), 1);
}

TEST(ServeCpu, BundleWithWrongShapesIsRejected) {
  auto dir = scratch_dir("serve-bad");
  random_model(dir / "bundle", false);
  std::string cfg = read_file(dir / "bundle" / "config.json");
  write_text(dir / "bundle" / "config.json", cfg.replace(cfg.find("\"intermediate_size\": 96"), 23, "\"intermediate_size\": 80"));
  EXPECT_NE(user_error_of([&] { serve::load_bundle(dir / "bundle"); }).find("wrong shape"), std::string::npos);
}

static std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) out.push_back(l);
  return out;
}

// `chunkwise batch` end to end on the CPU: results in input order, greedy tokens equal to the reference model
// (up to an end-of-sequence token), and a malformed line refused with its line number and no output written.
TEST(ServeCpu, BatchCommandWritesResultsInInputOrder) {
  auto dir = scratch_dir("serve-batch");
  random_model(dir / "bundle", false);
  serve::Bundle b = serve::load_bundle(dir / "bundle");
  const int64_t eos = Tokenizer::load(dir / "bundle" / "tokenizer.model").identity().eos_id;
  const std::vector<std::vector<int32_t>> prompts = {{5, 17, 99}, {250, 3, 3, 8, 1, 77, 12, 40, 41}, {9}};
  std::string in;
  for (size_t i = 0; i < prompts.size(); ++i) {
    in += "{\"id\": \"r" + std::to_string(i) + "\", \"prompt_tokens\": [";
    for (size_t j = 0; j < prompts[i].size(); ++j) in += (j ? "," : "") + std::to_string(prompts[i][j]);
    in += "]}\n";
  }
  in += "{\"prompt\": \"text prompts are tokenized\", \"max_new_tokens\": 3}\n";
  write_text(dir / "in.jsonl", in);
  std::string out;
  ASSERT_EQ(run_command(chunkwise_bin() + " batch " + (dir / "bundle").string() + " " + (dir / "in.jsonl").string() + " " +
                            (dir / "out.jsonl").string() + " --device cpu --max-new-tokens 6 --token-budget 5",
                        &out),
            0)
      << out;
  EXPECT_NE(out.find("batch: 4 requests on cpu"), std::string::npos) << out;
  std::vector<json> lines;
  for (auto& l : split_lines(read_file(dir / "out.jsonl"))) lines.push_back(json::parse(l));
  ASSERT_EQ(lines.size(), 4u);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(lines[i]["id"], "r" + std::to_string(i));
    serve::CpuModel m(b);
    auto cache = m.new_cache();
    std::vector<float> logits;
    for (int32_t t : prompts[i]) logits = m.step(t, cache);
    std::vector<int32_t> want;
    for (int k = 0; k < 6; ++k) {
      int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
      if (next == eos) break;
      want.push_back(next);
      logits = m.step(next, cache);
    }
    EXPECT_EQ(lines[i]["tokens"].get<std::vector<int32_t>>(), want) << "request " << i;
  }
  EXPECT_EQ(lines[3]["id"], 4);  // no id: the line number
  EXPECT_LE(lines[3]["tokens"].size(), 3u);

  write_text(dir / "bad.jsonl", "{\"prompt_tokens\": [1, 2]}\n{\"prompt_tokens\": \"oops\"}\n");
  EXPECT_EQ(run_command(chunkwise_bin() + " batch " + (dir / "bundle").string() + " " + (dir / "bad.jsonl").string() + " " +
                            (dir / "bad-out.jsonl").string() + " --device cpu",
                        &out),
            2);
  EXPECT_NE(out.find("bad.jsonl:2"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir / "bad-out.jsonl"));
  // Lines the engine could not run, found before anything runs and named by line: an empty prompt, a prompt
  // as long as the context, sampling settings out of range.
  std::string spaced;  // 1,1,1,...: max_seq_len tokens
  for (int64_t i = 0; i < b.config.max_seq_len; ++i) spaced += i ? ",1" : "1";
  const std::vector<std::pair<std::string, std::string>> bad_lines = {
      {"{\"prompt\": \"\"}", "the prompt is empty"},
      {"{\"prompt_tokens\": [" + spaced + "]}", "the model's context is"},
      {"{\"prompt_tokens\": [1], \"top_p\": 0, \"temperature\": 0.8}", "\"top_p\" is 0"},
      {"{\"prompt_tokens\": [1], \"temperature\": -1}", "\"temperature\" is -1"}};
  for (const auto& [line, why] : bad_lines) {
    write_text(dir / "bad.jsonl", "{\"prompt_tokens\": [1, 2]}\n" + line + "\n");
    EXPECT_EQ(run_command(chunkwise_bin() + " batch " + (dir / "bundle").string() + " " + (dir / "bad.jsonl").string() +
                              " " + (dir / "bad-out.jsonl").string() + " --device cpu",
                          &out),
              2)
        << line;
    EXPECT_NE(out.find("bad.jsonl:2: "), std::string::npos) << out;
    EXPECT_NE(out.find(why), std::string::npos) << out;
    EXPECT_FALSE(fs::exists(dir / "bad-out.jsonl"));
  }
}

// Engine and sampling flags out of range are refused with the flag's name before a model is built (a page size
// of 0 used to divide by zero; a NaN temperature sampled garbage).
TEST(ServeCpu, FlagsOutOfRangeAreRefusedByName) {
  auto dir = scratch_dir("serve-flags");
  random_model(dir / "bundle", false);
  for (const std::string flag : {"--page-size 0", "--kv-pages -1", "--kv-fraction 2", "--max-tokens 0",
                                 "--token-budget 0", "--max-new-tokens 0", "--temperature nan", "--temperature -1",
                                 "--top-k -1", "--top-p 0", "--top-p 1.5"}) {
    std::string out;
    EXPECT_EQ(run_command(chunkwise_bin() + " generate " + (dir / "bundle").string() + " --prompt 'a b' --device cpu " +
                              flag,
                          &out),
              2)
        << flag << ": " << out;
    EXPECT_NE(out.find("error: " + flag.substr(0, flag.find(' '))), std::string::npos) << flag << ": " << out;
  }
}

// An interrupted `chunkwise batch` job resumes: a run that dies after two results (CHUNKWISE_BATCH_EXIT_AFTER, as
// a crash would) leaves no OUT and a journal (OUT.partial) with those two; a torn half line appended to it is
// dropped; without --resume the journal is kept and the command says how to go on; with it, only the other
// requests run and OUT equals the uninterrupted run's byte for byte (greedy and seeded sampling alike), and
// the journal is gone. A journal of another job (the input changed) is refused and kept. Progress written to a
// log file (not a terminal) comes as a few whole lines, not a redrawn bar per step.
TEST(ServeCpu, BatchCommandResumesAnInterruptedJob) {
  auto dir = scratch_dir("serve-batch-resume");
  random_model(dir / "bundle", false);
  std::string in;
  for (int i = 0; i < 6; ++i) {
    in += "{\"id\": " + std::to_string(100 + i) + ", \"prompt_tokens\": [" + std::to_string(5 + i) + ", 17, " +
          std::to_string(40 * i + 1) + "]";
    in += i % 2 ? ", \"temperature\": 0.9, \"seed\": " + std::to_string(7 + i) + "}\n" : "}\n";
  }
  write_text(dir / "in.jsonl", in);
  const std::string job = chunkwise_bin() + " batch " + (dir / "bundle").string() + " " + (dir / "in.jsonl").string() +
                          " " + (dir / "out.jsonl").string() + " --device cpu --max-new-tokens 5 --token-budget 4";
  const fs::path out_file = dir / "out.jsonl", journal = dir / "out.jsonl.partial";
  std::string log;
  ASSERT_EQ(run_command(job, &log), 0) << log;
  size_t progress_lines = 0;  // not a terminal: a progress line every 10 s and the last, not one per step
  for (const std::string& l : split_lines(log)) progress_lines += l.find(" new tok/s") != std::string::npos && l[0] == '[';
  EXPECT_GE(progress_lines, 1u) << log;
  EXPECT_LE(progress_lines, 2u) << log;
  const std::string whole = read_file(out_file);
  ASSERT_EQ(split_lines(whole).size(), 6u);
  EXPECT_FALSE(fs::exists(journal)) << "the journal is removed once OUT is written";
  fs::remove(out_file);

  EXPECT_NE(run_command("CHUNKWISE_BATCH_EXIT_AFTER=2 " + job, &log), 0) << log;
  EXPECT_FALSE(fs::exists(out_file)) << "no OUT from an interrupted run";
  ASSERT_TRUE(fs::exists(journal));
  const std::string kept = read_file(journal);
  ASSERT_EQ(split_lines(kept).size(), 3u) << kept;  // the header and two results
  write_text(journal, kept + "{\"index\": 3, \"resu");  // torn while writing a third

  EXPECT_EQ(run_command(job, &log), 2);
  EXPECT_NE(log.find("--resume"), std::string::npos) << log;
  EXPECT_EQ(read_file(journal), kept + "{\"index\": 3, \"resu") << "the journal is left as it was";

  ASSERT_EQ(run_command(job + " --resume", &log), 0) << log;
  EXPECT_NE(log.find("batch: 4 requests on cpu"), std::string::npos) << log;
  EXPECT_NE(log.find("2 requests resumed"), std::string::npos) << log;
  EXPECT_EQ(read_file(out_file), whole) << "the resumed job's results equal the uninterrupted run's";
  EXPECT_FALSE(fs::exists(journal));

  fs::remove(out_file);
  EXPECT_NE(run_command("CHUNKWISE_BATCH_EXIT_AFTER=1 " + job, &log), 0) << log;
  write_text(dir / "in.jsonl", in + "{\"prompt_tokens\": [9]}\n");
  EXPECT_EQ(run_command(job + " --resume", &log), 2);
  EXPECT_NE(log.find("another job: the input file changed"), std::string::npos) << log;
  EXPECT_TRUE(fs::exists(journal));
  EXPECT_FALSE(fs::exists(out_file));
}

// `chunkwise generate` streams the prompt and its greedy continuation, the reference model's tokens.
TEST(ServeCpu, GenerateCommandStreamsTheGreedyContinuation) {
  auto dir = scratch_dir("serve-generate");
  random_model(dir / "bundle", false);
  serve::Bundle b = serve::load_bundle(dir / "bundle");
  Tokenizer tok = Tokenizer::load(dir / "bundle" / "tokenizer.model");
  const std::string prompt = "the quick brown";
  std::vector<int> ids = tok.encode(prompt);
  serve::CpuModel m(b);
  auto cache = m.new_cache();
  std::vector<float> logits;
  for (int t : ids) logits = m.step(t, cache);
  for (int k = 0; k < 7; ++k) {
    int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    if (next == tok.identity().eos_id) break;
    ids.push_back(next);
    logits = m.step(next, cache);
  }
  std::string out;
  ASSERT_EQ(run_command(chunkwise_bin() + " generate " + (dir / "bundle").string() + " --prompt '" + prompt +
                            "' --max-new-tokens 7 --device cpu --token-budget 2",
                        &out),
            0)
      << out;
  EXPECT_EQ(out, tok.decode(ids) + "\n");
}

// bench serve's mixed scenario (the engine issue's "long prompts arriving while 32 sequences decode", small
// sizes): by default the clock starts with every decoder decoding, so the decode-only run is exactly the
// decoders' remaining tokens; --mixed-cold-start puts their prompts' prefill inside the window.
TEST(ServeCli, BenchMixedStartsWithTheDecodersDecoding) {
  auto run = [](const std::string& extra) {
    std::string out;
    EXPECT_EQ(run_command(chunkwise_bin() + " bench serve --device cpu --config tiny --quick --scenario mixed " +
                              "--mixed-budget 16 " + extra + " 2>/dev/null",
                          &out),
              0)
        << out;
    std::map<std::string, json> by_mode;  // "decode-only", "prefill-first", "chunked", "ratio"
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);) {
      if (line.empty() || line[0] != '{') continue;
      json j = parse_json_checked(line, "bench serve output");
      if (j["bench"] == "serve-mixed") by_mode[j["mode"].get<std::string>()] = j;
      if (j["bench"] == "serve-mixed-ratio") by_mode["ratio"] = j;
    }
    return by_mode;
  };
  auto warm = run(""), cold = run("--mixed-cold-start");
  ASSERT_EQ(warm.size(), 4u);
  ASSERT_EQ(cold.size(), 4u);
  const int decoder_new = 48;  // --quick: 4 decoders of 48 new tokens, 2 long prompts of 200
  EXPECT_EQ(warm["decode-only"]["iterations"].get<int>(), decoder_new - 1);
  EXPECT_EQ(warm["ratio"]["start"], "warm");
  EXPECT_GT(cold["decode-only"]["iterations"].get<int>(), decoder_new - 1);
  EXPECT_EQ(cold["ratio"]["start"], "cold");
  for (auto* r : {&warm, &cold}) {
    EXPECT_GT((*r)["chunked"]["iterations"].get<int>(), (*r)["prefill-first"]["iterations"].get<int>());
    EXPECT_GT((*r)["ratio"]["throughput_chunked_over_prefill_first"].get<double>(), 0);
  }
}

// --mixed-rounds N repeats the three runs N times (each line names its round) and ends with one summary per
// budget: the median of the rounds' ratios and how many rounds met both targets (p99 <= 1.5 x, throughput >= 1 x).
TEST(ServeCli, BenchMixedRoundsSummariseEveryRound) {
  std::string out;
  ASSERT_EQ(run_command(chunkwise_bin() + " bench serve --device cpu --config tiny --quick --scenario mixed " +
                            "--mixed-budget 16 24 --mixed-rounds 3 2>/dev/null",
                        &out),
            0)
      << out;
  std::map<int, std::vector<json>> ratios;  // budget -> ratio lines
  std::map<int, json> summary;
  std::set<int> rounds_seen;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] != '{') continue;
    json j = parse_json_checked(line, "bench serve output");
    if (j["bench"] == "serve-mixed") rounds_seen.insert(j["round"].get<int>());
    if (j["bench"] == "serve-mixed-ratio") ratios[j["budget"].get<int>()].push_back(j);
    if (j["bench"] == "serve-mixed-summary") summary[j["budget"].get<int>()] = j;
  }
  EXPECT_EQ(rounds_seen, (std::set<int>{1, 2, 3}));
  ASSERT_EQ(summary.size(), 2u) << out;
  for (int budget : {16, 24}) {
    ASSERT_EQ(ratios[budget].size(), 3u) << budget;
    std::vector<double> p99, thr;
    int met = 0;
    for (const json& r : ratios[budget]) {
      const double p = r["p99_chunked_over_decode_only"].get<double>(), t = r["throughput_chunked_over_prefill_first"].get<double>();
      p99.push_back(p), thr.push_back(t), met += p <= 1.5 && t >= 1.0;
    }
    std::sort(p99.begin(), p99.end()), std::sort(thr.begin(), thr.end());
    const json& s = summary[budget];
    EXPECT_EQ(s["rounds"].get<int>(), 3);
    EXPECT_NEAR(s["median_p99_chunked_over_decode_only"].get<double>(), p99[1], 1e-4 * p99[1]);
    EXPECT_NEAR(s["median_throughput_chunked_over_prefill_first"].get<double>(), thr[1], 1e-4 * thr[1]);
    EXPECT_EQ(s["rounds_meeting_both"].get<int>(), met);
  }
}
