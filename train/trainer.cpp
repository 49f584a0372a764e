// Implementation of train/trainer.h. Read `train()` top to bottom: it is the whole loop.
#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <iomanip>
#include <set>
#include <sstream>

#include "checkpoints/checkpoint.h"
#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "data/token_store.h"
#include "data/window_sampler.h"
#include "train/adamw.h"
#include "train/metrics.h"
#include "train/model_setup.h"
#include "train/schedule.h"
#include "train/step_strategy.h"

namespace cw {

double unigram_entropy(const std::vector<uint32_t>& tokens, int64_t vocab_size) {
  std::vector<int64_t> counts(size_t(vocab_size), 0);
  for (uint32_t t : tokens) ++counts[t];
  double h = 0, n = double(tokens.size());
  for (int64_t c : counts)
    if (c) h -= double(c) / n * std::log(double(c) / n);
  return h;
}

namespace {

using Clock = std::chrono::steady_clock;

std::set<int64_t> parse_step_list(const std::string& s) {
  std::set<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.insert(std::stoll(item));
  return out;
}

double evaluate(CausalLM& model, const std::shared_ptr<const std::vector<uint32_t>>& tokens, int64_t seq_len,
                int64_t batch_size, int64_t max_batches, const torch::Device& device) {
  torch::NoGradGuard ng;
  model.eval();
  WindowSamplerOptions o;
  o.seq_len = seq_len;
  o.shuffle = false;
  o.batch_size = std::min<int64_t>(batch_size, std::max<int64_t>(1, int64_t(tokens->size() - 1) / seq_len));
  WindowSampler val(tokens, o);
  int64_t n = std::min(max_batches, val.batches_per_epoch());
  double sum = 0, count = 0;
  for (int64_t i = 0; i < n; ++i) {
    Batch b = val.next().to(device);
    sum += model.loss_sum(b).item<double>();
    count += double(b.n_target_tokens);
  }
  model.train();
  return sum / count;
}

NamedTensors rng_state(const torch::Device& device) {
  NamedTensors out;
  auto gen = at::detail::getDefaultCPUGenerator();
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    out.emplace_back("cpu", gen.get_state());
  }
  if (device.is_cuda()) {
    for (int i = 0; i < int(torch::cuda::device_count()); ++i) {
      auto g = at::globalContext().defaultGenerator(torch::Device(torch::kCUDA, i));
      std::lock_guard<std::mutex> lock(g.mutex());
      out.emplace_back("cuda." + std::to_string(i), g.get_state());
    }
  }
  return out;
}

void restore_rng(const std::map<std::string, torch::Tensor>& rng, const torch::Device& device) {
  for (auto& [name, state] : rng) {
    if (name == "cpu") {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(state);
    } else if (device.is_cuda() && name.rfind("cuda.", 0) == 0) {
      int i = std::stoi(name.substr(5));
      if (i < int(torch::cuda::device_count())) {
        auto g = at::globalContext().defaultGenerator(torch::Device(torch::kCUDA, i));
        std::lock_guard<std::mutex> lock(g.mutex());
        g.set_state(state);
      }
    }
  }
}

// Keys whose change makes a checkpoint's state meaningless for this run.
void require_compatible(const Recipe& now, const Recipe& saved, const std::string& where) {
  std::string diff;
  for (auto& k : recipe_keys()) {
    bool matters = k.name.rfind("model.", 0) == 0 || k.name == "data.seq_len" || k.name == "data.batch_size" ||
                   k.name == "run.seed" || k.name == "data.train";
    if (matters && now.s(k.name) != saved.s(k.name))
      diff += "\n  " + k.name + ": checkpoint " + saved.s(k.name) + ", now " + now.s(k.name);
  }
  check(diff.empty(), "cannot resume from ", where, ": the recipe changed keys the checkpoint depends on:", diff);
}

}  // namespace

TrainResult train(const Recipe& r, const TrainOptions& opt) {
  std::ostream& out = *opt.out;
  TrainResult result;
  const fs::path run_dir = expand_user(r.s("run.out_dir")) / r.s("run.name");
  result.run_dir = run_dir;
  if (r.i("run.threads") > 0) torch::set_num_threads(int(r.i("run.threads")));
  const torch::Device device = resolve_device(r.s("run.device"));

  // 1. Data and tokenizer, checked against each other.
  check(!r.s("data.train").empty(), r.file().string(), ": [data] train is not set");
  Tokenizer tok = Tokenizer::load(expand_user(r.s("data.tokenizer")));
  auto train_store = read_token_store(expand_user(r.s("data.train")));
  require_same_tokenizer(r.s("data.train"), train_store.tokenizer, tok.identity(), r.s("data.tokenizer"));
  auto train_tokens = std::make_shared<const std::vector<uint32_t>>(std::move(train_store.tokens));
  std::shared_ptr<const std::vector<uint32_t>> val_tokens;
  if (!r.s("data.val").empty()) {
    auto val_store = read_token_store(expand_user(r.s("data.val")));
    require_same_tokenizer(r.s("data.val"), val_store.tokenizer, tok.identity(), r.s("data.tokenizer"));
    val_tokens = std::make_shared<const std::vector<uint32_t>>(std::move(val_store.tokens));
    check(int64_t(val_tokens->size()) > r.i("data.seq_len"), r.s("data.val"), " holds fewer tokens than one sequence");
  }
  const int64_t T = r.i("data.seq_len"), B = r.i("data.batch_size"), accum = r.i("train.grad_accum");
  const int64_t total_steps = r.i("train.steps");
  check(T > 0 && B > 0 && accum > 0 && total_steps > 0, "[data] seq_len, batch_size, [train] grad_accum and steps "
        "must be positive");
  WindowSamplerOptions so;
  so.seq_len = T, so.batch_size = B, so.seed = uint64_t(r.i("run.seed"));
  WindowSampler sampler(train_tokens, so);

  // 2. Model, optimizer, schedule, step strategy.
  torch::manual_seed(uint64_t(r.i("run.seed")));
  ModelConfig mc = model_config_from_recipe(r, tok.identity().vocab_size);
  auto model = build_model(mc);
  model->to(device);
  model->train();
  NamedTensors params = named_parameters_of(*model);
  std::vector<bool> decay;
  for (auto& [name, p] : params)
    decay.push_back(default_weight_decay(name, p, r.b("optim.decay_embeddings"), r.b("optim.decay_norms")));
  AdamW optimizer(params, decay, {r.f("optim.beta1"), r.f("optim.beta2"), r.f("optim.eps"), r.f("optim.weight_decay")});
  auto schedule = make_schedule(r);
  auto strategy = make_step_strategy("standard");
  const std::set<int64_t> inject_nan = parse_step_list(r.s("debug.inject_nan_steps"));

  // 3. Fresh start or resume.
  int64_t step = 0, skipped = 0, bad_in_row = 0, tokens_seen = 0;
  auto latest = latest_checkpoint(run_dir);
  check(opt.resume || !latest, run_dir.string(), " already has checkpoints; pass --resume to continue it, or "
        "choose another --run.name");
  fs::create_directories(run_dir);
  if (opt.resume && latest) {
    LoadedCheckpoint ck = load_checkpoint(*latest);
    require_compatible(r, Recipe::from_text(ck.recipe_ini, ck.dir.string() + "/recipe.ini"), ck.dir.string());
    json st = parse_json_checked(ck.state_json, ck.dir.string() + "/state.json");
    check(st.value("tokenizer_hash", "") == tok.identity().hash, "cannot resume from ", ck.dir.string(),
          ": it was trained with tokenizer ", st.value("tokenizer_hash", "?"), ", the recipe names ", tok.identity().hash);
    load_parameters(*model, ck.model, ck.dir.string() + "/model.safetensors");
    optimizer.load_state(ck.optimizer, st.at("optimizer_steps").get<int64_t>(), ck.dir.string() + "/optimizer.safetensors");
    sampler.restore(st.at("sampler").dump());
    restore_rng(ck.rng, device);
    step = ck.step;
    skipped = st.value("skipped_steps", int64_t(0));
    tokens_seen = st.value("tokens_seen", int64_t(0));
    out << "resuming " << run_dir.string() << " from " << ck.dir.filename().string() << "\n";
  } else if (opt.resume) {
    out << "no complete checkpoint in " << run_dir.string() << ": starting at step 0\n";
  }
  write_file_atomic(run_dir / "recipe.ini", r.resolved_ini());
  MetricsLog metrics(run_dir / "metrics.jsonl", step > 0 ? step : -1);

  const int64_t tokens_per_step = B * T * accum;
  const double flops_per_token = mc.train_flops_per_token(T);
  result.unigram_entropy = unigram_entropy(*train_tokens, tok.identity().vocab_size);
  out << "model " << mc.family << ": " << format_count(double(mc.non_embedding_params() + mc.embedding_params()))
      << " parameters (" << format_count(double(mc.non_embedding_params())) << " non-embedding), d_model "
      << mc.d_model << ", " << mc.n_layers << " layers, vocab " << mc.vocab_size << " | device " << device.str()
      << " | " << format_count(double(tokens_per_step)) << " tokens/step, " << total_steps << " steps\n"
      << "train tokens " << format_count(double(train_tokens->size())) << ", unigram entropy "
      << std::fixed << std::setprecision(3) << result.unigram_entropy << " nats (loss of a context-free model)\n";

  auto checkpoint = [&](int64_t at_step) {
    json st = {{"step", at_step}, {"optimizer_steps", optimizer.steps()}, {"sampler", json::parse(sampler.state())},
               {"skipped_steps", skipped}, {"tokens_seen", tokens_seen}, {"tokenizer_hash", tok.identity().hash},
               {"model_config", {{"family", mc.family}, {"vocab_size", mc.vocab_size}}}};
    CheckpointContents c{named_parameters_of(*model), optimizer.state_tensors(), rng_state(device), st.dump(2),
                         r.resolved_ini()};
    save_checkpoint(run_dir, at_step, c, r.i("train.keep"));
  };
  auto run_eval = [&](int64_t at_step) {
    if (!val_tokens) return;
    double v = evaluate(*model, val_tokens, T, B, r.i("train.eval_batches"), device);
    result.val_loss = v;
    metrics.write({{"step", at_step}, {"val_loss", v}, {"val_ppl", std::exp(v)}});
    out << "eval step " << at_step << " | val loss " << std::setprecision(4) << v << " | val ppl "
        << std::setprecision(2) << std::exp(v) << "\n";
  };

  // 4. The loop.
  result.first_step = step + 1;
  const auto t_start = Clock::now();
  auto t_log = t_start;
  int64_t tokens_since_log = 0;
  while (step < total_steps) {
    ++step;
    const double lr = schedule->lr(step);
    std::vector<Batch> micro;
    for (int64_t a = 0; a < accum; ++a) micro.push_back(sampler.next().to(device));
    optimizer.zero_grad();
    StepResult sr = strategy->run(*model, micro);
    if (inject_nan.count(step)) {  // test hook: poison this step
      sr.loss = NAN;
      params.front().second.mutable_grad().fill_(NAN);
    }
    std::vector<torch::Tensor> grads;
    for (auto& [n, p] : params)
      if (p.grad().defined()) grads.push_back(p);
    double clip = r.f("optim.grad_clip");
    double gnorm = torch::nn::utils::clip_grad_norm_(grads, clip > 0 ? clip : INFINITY);
    tokens_seen += sr.tokens;
    tokens_since_log += sr.tokens;
    if (!std::isfinite(sr.loss) || !std::isfinite(gnorm)) {  // NaN guard: nothing reaches the weights
      optimizer.zero_grad();
      ++skipped;
      ++bad_in_row;
      result.losses.push_back(NAN);
      metrics.write({{"step", step}, {"skipped", true}, {"loss", nullptr}, {"grad_norm", nullptr}});
      out << "step " << step << ": non-finite loss or gradient, step skipped (" << bad_in_row << " in a row)\n";
      check(bad_in_row < r.i("train.max_bad_steps"), "stopped at step ", step, ": ", bad_in_row,
            " non-finite steps in a row. The weights and checkpoints hold no NaN; lower [optim] lr, check the "
            "data, or resume from the last checkpoint with --resume.");
      if (step == total_steps || (r.i("train.ckpt_every") > 0 && step % r.i("train.ckpt_every") == 0)) checkpoint(step);
      continue;
    }
    bad_in_row = 0;
    optimizer.step(lr);
    result.losses.push_back(sr.loss);

    const auto now = Clock::now();
    const double elapsed = std::chrono::duration<double>(now - t_start).count();
    const double since_log = std::chrono::duration<double>(now - t_log).count();
    const double tok_s = double(tokens_since_log) / std::max(since_log, 1e-9);
    const double mfu = device.is_cuda() ? tok_s * flops_per_token / (r.f("run.peak_tflops") * 1e12) : NAN;
    const int64_t done_here = step - result.first_step + 1;
    const double eta = elapsed / double(done_here) * double(total_steps - step);
    json rec = {{"step", step}, {"loss", sr.loss}, {"lr", lr}, {"grad_norm", gnorm}, {"tokens", tokens_seen},
                {"tok_s", tok_s}, {"elapsed_s", elapsed}};
    if (device.is_cuda()) rec["mfu"] = mfu;
    if (step % r.i("train.log_every") == 0 || step == total_steps || step == result.first_step) {
      metrics.write(rec);
      std::ostringstream line;
      line << "step " << step << "/" << total_steps << " | loss " << std::fixed << std::setprecision(4) << sr.loss
           << " | lr " << std::scientific << std::setprecision(2) << lr << " | gnorm " << std::fixed
           << std::setprecision(3) << gnorm << " | " << format_count(tok_s) << " tok/s | MFU "
           << (device.is_cuda() ? std::to_string(std::lround(mfu * 1000) / 10.0).substr(0, 4) + "%" : std::string("-"))
           << " | ETA " << format_duration(eta);
      out << line.str() << "\n" << std::flush;
      t_log = now;
      tokens_since_log = 0;
    } else {
      metrics.write(rec);
    }
    const bool last = step == total_steps;
    if (r.i("train.eval_every") > 0 && step % r.i("train.eval_every") == 0 && !last) run_eval(step);
    if (opt.stop_at > 0 && step >= opt.stop_at && !last) {  // simulated crash: no final checkpoint
      result.last_step = step;
      result.skipped_steps = skipped;
      return result;
    }
    if ((r.i("train.ckpt_every") > 0 && step % r.i("train.ckpt_every") == 0) || last) checkpoint(step);
  }
  run_eval(step);
  result.last_step = step;
  result.skipped_steps = skipped;
  if (skipped) out << skipped << " step(s) were skipped for non-finite values\n";
  return result;
}

}  // namespace cw
