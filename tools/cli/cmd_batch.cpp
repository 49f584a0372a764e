// `chunkwise batch BUNDLE IN.jsonl OUT.jsonl`: an offline job through the inference engine. Each input line is
// {"id": .., "prompt": "text"} or {"prompt_tokens": [..]}, optionally with max_new_tokens, temperature, top_k,
// top_p, seed. Output lines come in input order: {"id", "text", "tokens", "finish_reason", "prompt_tokens"}.
// Progress on stderr, one throughput line at the end; OUT appears only when complete (temp name + rename).
// Each finished request is also appended to OUT.partial as it finishes (tools/cli/batch_journal.h), so that
// after a crash `--resume` runs only the rest; OUT.partial is removed once OUT is written.
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>

#include "common/env.h"
#include "common/files.h"
#include "common/json.h"
#include "data/tokenizer.h"
#include "tools/cli/batch_journal.h"
#include "tools/cli/commands.h"
#include "tools/cli/progress_line.h"
#include "tools/cli/serve_setup.h"

namespace cw::cli {

int batch_main(const Args& args) {
  po::options_description desc("batch options");
  std::string bundle, in_path, out_path;
  SamplingFlags sampling;  // defaults for lines that do not set their own
  EngineFlags flags;
  bool resume = false;
  desc.add_options()("bundle", po::value(&bundle)->required(), "bundle folder")(
      "in", po::value(&in_path)->required(), "requests, one JSON object per line")(
      "out", po::value(&out_path)->required(), "results, one JSON object per line")(
      "resume", po::bool_switch(&resume),
      "continue an interrupted job from OUT.partial (the requests that finished are not run again)");
  sampling.add_to(desc);
  flags.add_to(desc);
  po::positional_options_description pos;
  pos.add("bundle", 1).add("in", 1).add("out", 1);
  po::variables_map vm;
  if (!parse_args(args, desc, pos, vm, "chunkwise batch BUNDLE IN.jsonl OUT.jsonl [--device auto|cpu|cuda] [--prefix-sharing on] [--resume]"))
    return 0;
  flags.finish();
  sampling.finish();
  const kern::SampleParams& defaults = sampling.params;
  const int32_t max_new = sampling.max_new;
  fs::path dir = expand_user(bundle);
  Tokenizer tok = Tokenizer::load(dir / "tokenizer.model");
  serve::Bundle b = serve::load_bundle(dir);
  check(tok.identity().vocab_size <= b.config.vocab_size, dir.string(), ": tokenizer.model has more pieces than the model");

  std::ifstream in(expand_user(in_path));
  check(bool(in), in_path, ": cannot open");
  std::vector<serve::GenRequest> reqs;
  std::vector<json> ids;
  std::string line;
  int64_t line_no = 0, prompt_tokens = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = in_path + ":" + std::to_string(line_no);
    json j = parse_json_checked(line, where, 8);
    check(j.is_object(), where, ": each line must be a JSON object");
    serve::GenRequest r;
    r.id = int64_t(reqs.size());
    // Every field type-checked before conversion (a number too large for its type is an error, not a cast).
    auto int_field = [&](const char* key, int64_t fallback, int64_t lo, int64_t hi) -> int64_t {
      if (!j.contains(key)) return fallback;
      const json& v = j[key];
      check(v.is_number_integer() && v.get<int64_t>() >= lo && v.get<int64_t>() <= hi, where, ": \"", key,
            "\" must be an integer from ", lo, " to ", hi);
      return v.get<int64_t>();
    };
    auto float_field = [&](const char* key, double fallback) -> double {
      if (!j.contains(key)) return fallback;
      check(j[key].is_number(), where, ": \"", key, "\" must be a number");
      return j[key].get<double>();
    };
    if (j.contains("prompt_tokens")) {
      const json& t = j["prompt_tokens"];
      check(t.is_array(), where, ": \"prompt_tokens\" must be an array of token ids");
      for (const json& x : t) {
        check(x.is_number_integer() && x.get<int64_t>() >= 0 && x.get<int64_t>() < b.config.vocab_size, where,
              ": \"prompt_tokens\" holds ", x.dump(), ", not a token id below ", b.config.vocab_size);
        r.prompt.push_back(int32_t(x.get<int64_t>()));
      }
    } else {
      check(j.contains("prompt") && j["prompt"].is_string(), where, ": needs \"prompt\" (text) or \"prompt_tokens\"");
      auto t = tok.encode(j["prompt"].get<std::string>());
      r.prompt.assign(t.begin(), t.end());
    }
    check(!r.prompt.empty(), where, ": the prompt is empty (no tokens)");
    check(int64_t(r.prompt.size()) < b.config.max_seq_len, where, ": the prompt has ", r.prompt.size(),
          " tokens; the model's context is ", b.config.max_seq_len, " (shorten it)");
    r.max_new_tokens = int32_t(int_field("max_new_tokens", max_new, 1, kMaxNewTokens));
    r.sampling = defaults;
    r.sampling.temperature = float(float_field("temperature", defaults.temperature));
    r.sampling.top_k = int32_t(int_field("top_k", defaults.top_k, 0, 1 << 30));
    r.sampling.top_p = float(float_field("top_p", defaults.top_p));
    r.sampling.seed = uint64_t(int_field("seed", int64_t(defaults.seed), 0, INT64_MAX));
    const std::string bad =
        sampling_problem(r.sampling, [](const char* field) { return '"' + std::string(field) + '"'; });
    check(bad.empty(), where, ": ", bad);
    r.eos_id = tok.identity().eos_id;
    prompt_tokens += int64_t(r.prompt.size());
    ids.push_back(j.contains("id") ? j["id"] : json(line_no));
    reqs.push_back(std::move(r));
  }
  check(!reqs.empty(), in_path, ": no requests");
  const size_t n = reqs.size();

  // The journal: results kept from an interrupted run of the same job, and this run's as they finish.
  const fs::path out_file = expand_user(out_path);
  const fs::path journal_file = fs::path(out_file.string() + ".partial");
  const fs::path out_dir = out_file.has_parent_path() ? out_file.parent_path() : fs::path(".");
  check(fs::is_directory(out_dir), out_path, ": the folder ", out_dir.string(), " does not exist (create it first)");
  const json key = BatchJournal::job_key(
      expand_user(in_path), dir,
      {{"max_new_tokens", max_new}, {"temperature", defaults.temperature}, {"top_k", defaults.top_k},
       {"top_p", defaults.top_p}, {"seed", defaults.seed}});
  std::map<int64_t, json> results;  // request index -> output line
  if (fs::exists(journal_file)) {
    check(resume, journal_file.string(), " holds the finished requests of an interrupted run: pass --resume to ",
          "continue it, or remove it to start the job over");
    results = BatchJournal::read(journal_file, key, n);
  } else if (resume) {
    std::cerr << "batch: no " << journal_file.string() << ", so nothing to resume: running every request\n";
  }
  const size_t resumed = results.size();
  std::vector<serve::GenRequest> to_run;
  int64_t resumed_prompt_tokens = 0;
  for (serve::GenRequest& r : reqs) {
    if (results.count(r.id)) resumed_prompt_tokens += int64_t(r.prompt.size());
    else to_run.push_back(std::move(r));
  }
  prompt_tokens -= resumed_prompt_tokens;
  // Test hook: end the process (as a crash would) once this many results are in the journal.
  const size_t exit_after_n = size_t(env_int("CHUNKWISE_BATCH_EXIT_AFTER", 0));

  auto backend = make_backend(b, flags);
  serve::Engine engine(*backend, flags.engine);
  BatchJournal journal;  // opened once the engine stands, so that a failed start leaves no journal behind
  journal.open(journal_file, key, results);
  const auto t0 = std::chrono::steady_clock::now();
  engine.submit_batch(std::move(to_run));
  int64_t new_tokens = 0;
  ProgressLine progress("requests", int64_t(n));
  while (!engine.idle()) {
    engine.step();
    for (auto& r : engine.take_finished()) {
      new_tokens += int64_t(r.tokens.size());
      std::vector<int> t(r.tokens.begin(), r.tokens.end());
      json o = {{"id", ids[size_t(r.id)]}, {"text", tok.decode(t)}, {"tokens", r.tokens},
                {"finish_reason", r.finish_reason}, {"prompt_tokens", r.prompt_tokens}};
      journal.append(r.id, o);
      results[r.id] = std::move(o);
      if (exit_after_n > 0 && results.size() - resumed >= exit_after_n) std::_Exit(75);
    }
    const double s = progress.seconds();
    progress.update(int64_t(results.size()), std::to_string(int64_t(double(new_tokens) / std::max(s, 1e-9))) +
                                                 " new tok/s", /*force=*/engine.idle());
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  progress.finish();
  std::string out;
  for (size_t i = 0; i < n; ++i) out += results.at(int64_t(i)).dump() + "\n";
  write_file_atomic(out_file, out);
  journal.finish();
  std::cout << "batch: " << n - resumed << " requests on " << backend->name() << ", " << prompt_tokens << " prompt + "
            << new_tokens << " new tokens in " << secs << " s: " << int64_t(double(new_tokens) / std::max(secs, 1e-9))
            << " new tok/s, " << int64_t(double(prompt_tokens + new_tokens) / std::max(secs, 1e-9)) << " tok/s in all";
  if (engine.prefix_tokens_shared() > 0) std::cout << " (prefix sharing skipped " << engine.prefix_tokens_shared() << " prompt tokens)";
  if (resumed > 0) std::cout << "; " << resumed << " requests resumed from " << journal_file.string();
  std::cout << "\n";
  return 0;
}

}  // namespace cw::cli
