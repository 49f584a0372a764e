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
#include "data/packing_sampler.h"
#include "data/window_sampler.h"
#include "models/attention.h"
#include "models/lora.h"
#include "train/adamw.h"
#include "train/chunkwise_step.h"
#include "train/collectives.h"
#include "train/data_parallel.h"
#include "train/data_setup.h"
#include "train/deferred_values.h"
#include "train/graphed_step.h"
#include "train/metrics.h"
#include "train/model_setup.h"
#include "train/precision.h"
#include "train/schedule.h"
#include "train/sparsity.h"
#include "train/step_log.h"
#include "train/step_strategy.h"
#include "train/train_step.h"

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

// The random draws of one step on one rank (SpaCO's chunks): a function of the run's seed, the step and the
// rank only, so a resumed run draws what the uninterrupted one drew.
uint64_t step_seed(uint64_t run_seed, int64_t step, int rank) {
  uint64_t h = run_seed * 0x9E3779B97F4A7C15ull;
  h ^= uint64_t(step) + 0x632BE59BD9B4E019ull + (h << 6) + (h >> 2);
  h ^= uint64_t(rank) + 0x8CB92BA72F3D8DD7ull + (h << 6) + (h >> 2);
  return h;
}

// "3,7" -> {3, 7} (debug.inject_nan_steps); anything but positive step numbers is an error naming the key.
std::set<int64_t> parse_step_list(const std::string& s) {
  std::set<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    size_t used = 0;
    int64_t step = 0;
    try {
      step = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    check(used == item.size() && step >= 1, "debug.inject_nan_steps = '", s, "': '", item,
          "' is not a step number (use comma-separated steps, e.g. 3,7)");
    out.insert(step);
  }
  return out;
}

// CHUNK > 0 (chunk-wise runs): each sequence's loss chunk by chunk, so evaluation fits where training does.
// Supervised fine-tuning sets: their documents packed as in training, the loss on responses only.
double evaluate(CausalLM& model, const EvalSet& set, int64_t seq_len, int64_t batch_size, int64_t max_batches,
                const torch::Device& device, const std::string& precision, int64_t chunk) {
  torch::NoGradGuard ng;
  AutocastScope autocast(device, precision);
  model.eval();
  std::unique_ptr<Sampler> sampler;
  int64_t n = 0;
  if (!set.loss_begin.empty()) {
    PackingOptions o;
    o.seq_len = seq_len, o.batch_size = 1;
    const int64_t rows = PackingSampler(set.tokens, set.doc_offsets, o, set.loss_begin).rows_per_epoch();
    o.batch_size = std::min(batch_size, rows);
    n = std::min(max_batches, rows / o.batch_size);
    sampler = std::make_unique<PackingSampler>(set.tokens, set.doc_offsets, o, set.loss_begin);
  } else {
    WindowSamplerOptions o;
    o.seq_len = seq_len;
    o.shuffle = false;
    o.batch_size = std::min<int64_t>(batch_size, std::max<int64_t>(1, int64_t(set.tokens->size() - 1) / seq_len));
    auto windows = std::make_unique<WindowSampler>(set.tokens, o);
    n = std::min(max_batches, windows->batches_per_epoch());
    sampler = std::move(windows);
  }
  double sum = 0, count = 0;
  for (int64_t i = 0; i < n; ++i) {
    Batch b = sampler->next().to(device);
    if (b.n_target_tokens == 0) continue;
    sum += (chunk > 0 ? chunked_loss_sum(model, b, chunk) : model.loss_sum(b)).item<double>();
    count += double(b.n_target_tokens);
  }
  model.train();
  return count > 0 ? sum / count : NAN;
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
    static const std::set<std::string> data_keys = {"data.seq_len", "data.batch_size", "data.train", "data.strategy",
                                                    "data.order", "data.replay", "data.replay_fraction",
                                                    "data.dd_curriculum", "data.dd_cycles", "run.seed", "sparsity.level",
                                                    "lora.rank", "lora.alpha", "lora.targets"};
    bool matters = k.name.rfind("model.", 0) == 0 || data_keys.count(k.name);
    if (matters && now.s(k.name) != saved.s(k.name))
      diff += "\n  " + k.name + ": checkpoint " + saved.s(k.name) + ", now " + now.s(k.name);
  }
  check(diff.empty(), "cannot resume from ", where, ": the recipe changed keys the checkpoint depends on:", diff);
}

// lora.base_dtype: the dtype of the frozen projections (bf16 only where the products run in bf16).
torch::ScalarType lora_base_dtype(const Recipe& r, const std::string& precision) {
  const std::string want = r.s("lora.base_dtype");
  check(want != "bf16" || precision == "bf16", "lora.base_dtype = bf16 needs run.precision = bf16 (products in bf16); ",
        "use auto or fp32");
  return want == "bf16" || (want == "auto" && precision == "bf16") ? torch::kBFloat16 : torch::kFloat32;
}

}  // namespace

TrainResult train(const Recipe& r, const TrainOptions& opt) {
  // 0. Data parallel when started by torchrun (WORLD_SIZE > 1): rank 0 prints, logs and writes checkpoints.
  const DistEnv denv = DistEnv::from_environment();
  const bool is_main = denv.rank == 0;
  std::ostream null_out(nullptr);
  std::ostream& out = is_main ? *opt.out : null_out;
  TrainResult result;
  const fs::path run_dir = expand_user(r.s("run.out_dir")) / r.s("run.name");
  result.run_dir = run_dir;
  if (r.i("run.threads") > 0) torch::set_num_threads(int(r.i("run.threads")));
  torch::Device device = resolve_device(r.s("run.device"));
  if (denv.active() && device.is_cuda()) device = torch::Device(torch::kCUDA, int8_t(denv.local_rank));
  const std::string precision = resolve_precision(r.s("run.precision"), device);
  configure_device_math(device);

  // 1. Tokenizer, then every store checked against it: training sampler (with replay) and validation sets.
  check(!r.s("data.train").empty(), r.file().string(), ": [data] train is not set");
  Tokenizer tok = Tokenizer::load(expand_user(r.s("data.tokenizer")));
  TrainingData data = load_training_data(r, tok);
  Sampler& sampler = *data.sampler;
  const int64_t T = r.i("data.seq_len"), B = r.i("data.batch_size"), accum = r.i("train.grad_accum");
  const int64_t total_steps = r.i("train.steps");
  check(T > 0 && B > 0 && accum > 0 && total_steps > 0, "[data] seq_len, batch_size, [train] grad_accum and steps "
        "must be positive");
  check(B % denv.world == 0, "[data] batch_size = ", B, " does not divide over WORLD_SIZE = ", denv.world, " ranks");

  // 2. Model (fresh init, or weights from [init] from), optimizer, sparsity masks, schedule, step strategy.
  torch::manual_seed(uint64_t(r.i("run.seed")));
  auto latest = latest_checkpoint(run_dir);
  check(opt.resume || !latest, run_dir.string(), " already has checkpoints; pass --resume to continue it, or "
        "choose another --run.name");
  const bool resuming = opt.resume && latest;
  InitSource init;
  if (!resuming && !r.s("init.from").empty()) init = load_init_source(expand_user(r.s("init.from")));
  ModelConfig mc = model_config_from_recipe(r, tok.identity().vocab_size);
  if (init.bundle_config)
    mc = model_config_from_bundle(r, *init.bundle_config, tok.identity().vocab_size, init.description);
  if (!init.bundle_tokenizer.empty())
    check(Tokenizer::load(init.bundle_tokenizer).identity() == tok.identity(), "tokenizer mismatch: ",
          init.bundle_tokenizer.string(), " differs from ", r.s("data.tokenizer"),
          "; set [data] tokenizer to the bundle's tokenizer.model and prepare the data with it");
  if (init.checkpoint_config)
    check(init.checkpoint_config->family == mc.family, "[init] from = ", init.description, ": model.family = ",
          mc.family, " in the recipe, ", init.checkpoint_config->family, " in the checkpoint; set [model] family = ",
          init.checkpoint_config->family, " or start from another run");
  auto model = build_model(mc);
  const bool lora = mc.lora_rank > 0;
  if (lora) freeze_all_but_adapters(*model);  // only the adapters train
  model->loss_chunk_rows = r.i("train.loss_chunk");
  model->fused_kernels = fused_kernels_wanted(r.s("train.fused_kernels"), device);
  model->recompute_swiglu = r.b("train.recompute_swiglu");
  model->checkpoint_layers = r.b("train.checkpoint_layers");
  check(model->supports_memory_options() || (!model->checkpoint_layers && model->loss_chunk_rows == 0),
        "[model] family '", mc.family, "' keeps every activation and computes all logits at once: set train.checkpoint_layers = false ",
        "and train.loss_chunk = 0");
  set_attention_backend(r.s("train.attention"));
  NamedTensors params = trainable_parameters_of(*model);
  std::vector<bool> decay;
  for (auto& [name, p] : params)
    decay.push_back(default_weight_decay(name, p, r.b("optim.decay_embeddings"), r.b("optim.decay_norms")));
  const double level = r.f("sparsity.level");
  const uint64_t mask_seed = uint64_t(r.i("sparsity.seed") ? r.i("sparsity.seed") : r.i("run.seed"));
  check(!(lora && level > 0), "[lora] rank and [sparsity] level cannot both be set: sparsity masks the base weights, "
        "which LoRA keeps frozen");
  bool merged_source_adapters = false;
  if (init.checkpoint_config && init.checkpoint_config->lora_rank > 0) {
    // The source's adapters continue when this run adapts the same projections the same way; otherwise they
    // are merged into its weights, and this run starts from the adapted model (with fresh adapters, if any).
    const ModelConfig& s = *init.checkpoint_config;
    if (s.lora_rank != mc.lora_rank || s.lora_targets != mc.lora_targets || s.lora_alpha != mc.lora_alpha) {
      init.model = merge_lora(init.model, s);
      merged_source_adapters = true;
      out << "merged the LoRA adapters of " << init.description << " into its weights\n";
    }
  }
  if (!init.model.empty()) {  // a base without adapters leaves them at their initial values
    load_parameters(*model, init.model, init.description, lora ? is_lora_parameter : nullptr);
    out << "initialised weights from " << init.description << "\n";
  }
  // LoRA on weights read from disk: checkpoints hold the adapters alone and name the base (checkpoint_weights).
  json lora_base;
  if (lora && !init.model.empty() && !merged_source_adapters) {
    std::map<std::string, torch::Tensor> base;
    for (auto& [name, t] : init.model)
      if (!is_lora_parameter(name)) base[name] = t;
    lora_base = {{"from", fs::absolute(init.path).string()}, {"fingerprint", weights_fingerprint(base)}};
  }
  model->to(device);
  model->train();
  if (lora) keep_frozen_projections_in(*model, lora_base_dtype(r, precision));
  params = trainable_parameters_of(*model);  // the same tensors, now on the device
  std::unique_ptr<DataParallel> dp;
  if (denv.active()) {
    DataParallelOptions dpo;
    dpo.bucket_bytes = r.i("dist.bucket_mb") << 20;
    dpo.reduce_bf16 = r.s("dist.reduce_dtype") == "bf16";
    dpo.zero1 = r.i("dist.zero") == 1;
    dp = std::make_unique<DataParallel>(make_collectives(denv, device), params, dpo);
    dp->broadcast_parameters();
  }
  AdamW optimizer(params, decay, {r.f("optim.beta1"), r.f("optim.beta2"), r.f("optim.eps"), r.f("optim.weight_decay"),
                                  /*fused=*/device.is_cuda()});
  if (!resuming && !r.s("init.from").empty() && r.s("init.optimizer") == "checkpoint") {
    check(init.optimizer_steps >= 0, "[init] optimizer = checkpoint, but ", init.description, " holds no optimizer state");
    optimizer.load_state(init.optimizer, init.optimizer_steps, init.description);
  }
  SparsityMasks masks;
  if (level > 0 && !resuming) {
    bool reuse = !init.masks.empty();
    masks = reuse ? SparsityMasks::from_tensors(params, init.masks, init.description)
                  : SparsityMasks::create(params, level, mask_seed);
    check(!reuse || std::abs(masks.density() - (1.0 - level)) < 1e-3, init.description, " holds masks of density ",
          masks.density(), " but [sparsity] level = ", level, " asks for ", 1.0 - level);
    masks.apply_to_weights();
    masks.apply_to_optimizer(optimizer);
  }
  auto schedule = make_schedule(r);
  auto strategy = make_step_strategy(r);
  const bool chunkwise = r.s("chunkwise.mode") != "off";
  check(!chunkwise || model->supports_chunkwise(), "[chunkwise] mode = ", r.s("chunkwise.mode"), ": [model] family '",
        mc.family, "' does not support chunk-wise training; set [chunkwise] mode = off");
  const std::set<int64_t> inject_nan = parse_step_list(r.s("debug.inject_nan_steps"));

  // 3. Resume: weights, optimizer, masks, data position, random states, counters.
  int64_t step = 0, skipped = 0, tokens_seen = 0;  // the counters a resumed run starts from
  fs::create_directories(run_dir);
  if (resuming) {
    LoadedCheckpoint ck = load_checkpoint(*latest);
    Recipe saved = Recipe::from_text(ck.recipe_ini, ck.dir.string() + "/recipe.ini");
    require_compatible(r, saved, ck.dir.string());
    json st = parse_json_checked(ck.state_json, ck.dir.string() + "/state.json");
    check(st.value("tokenizer_hash", "") == tok.identity().hash, "cannot resume from ", ck.dir.string(),
          ": it was trained with tokenizer ", st.value("tokenizer_hash", "?"), ", the recipe names ", tok.identity().hash);
    load_parameters(*model, checkpoint_weights(ck), ck.dir.string() + "/model.safetensors");
    if (st.contains("lora_base")) lora_base = st["lora_base"];
    optimizer.load_state(ck.optimizer, st.at("optimizer_steps").get<int64_t>(), ck.dir.string() + "/optimizer.safetensors");
    if (level > 0) masks = SparsityMasks::from_tensors(params, ck.masks, ck.dir.string() + "/masks.safetensors");
    check(masks.active() == !ck.masks.empty(), "cannot resume from ", ck.dir.string(), ": [sparsity] level changed");
    sampler.restore(st.at("sampler").dump());
    restore_rng(ck.rng, device);
    step = ck.step;
    skipped = st.value("skipped_steps", int64_t(0));
    tokens_seen = st.value("tokens_seen", int64_t(0));
    out << "resuming " << run_dir.string() << " from " << ck.dir.filename().string() << "\n";
  } else if (opt.resume) {
    out << "no complete checkpoint in " << run_dir.string() << ": starting at step 0\n";
  }
  if (dp && r.i("dist.zero") == 1) dp->shard_optimizer(optimizer);
  if (is_main) write_file_atomic(run_dir / "recipe.ini", r.resolved_ini());
  MetricsLog metrics(is_main ? run_dir / "metrics.jsonl" : fs::path(), step > 0 ? step : -1);

  const int64_t tokens_per_step = B * T * accum;
  const double flops_per_token = mc.train_flops_per_token(T);
  int64_t n_sparsifiable = 0;
  for (auto& [name, p] : params) n_sparsifiable += is_sparsifiable(name, p) ? p.numel() : 0;
  result.unigram_entropy = unigram_entropy(*data.train_tokens, tok.identity().vocab_size);
  out << "model " << mc.family << ": " << format_count(double(mc.non_embedding_params() + mc.embedding_params()))
      << " parameters (" << format_count(double(mc.non_embedding_params())) << " non-embedding), d_model "
      << mc.d_model << ", " << mc.n_layers << " layers, vocab " << mc.vocab_size << " | device " << device.str()
      << " " << precision
      << " | " << format_count(double(tokens_per_step)) << " tokens/step, " << total_steps << " steps\n"
      << "train tokens " << format_count(double(data.train_tokens->size())) << ", unigram entropy "
      << std::fixed << std::setprecision(3) << result.unigram_entropy << " nats (loss of a context-free model)\n";
  if (lora) {
    int64_t trainable = 0, all = 0;
    for (auto& p : model->parameters()) all += p.numel(), trainable += p.requires_grad() ? p.numel() : 0;
    std::string targets;
    for (auto& t : mc.lora_targets) targets += (targets.empty() ? "" : ", ") + t;
    out << "LoRA rank " << mc.lora_rank << " on " << targets << ": " << format_count(double(trainable))
        << " trainable parameters (" << std::setprecision(2) << 100.0 * double(trainable) / double(all)
        << " % of " << format_count(double(all)) << "), the rest frozen\n";
  }
  if (chunkwise) {
    const int64_t chunk = r.i("chunkwise.chunk"), k = (T + chunk - 1) / chunk;
    const bool spaco = r.s("chunkwise.mode") == "spaco" && r.i("chunkwise.budget") < k;
    out << "chunk-wise back-propagation (" << r.s("chunkwise.mode") << "): " << k << " chunks of " << chunk
        << " tokens per sequence";
    if (spaco)
      out << ", each back-propagated with probability " << r.i("chunkwise.budget") << "/" << k << " and scaled by "
          << spaco_scale(k, r.i("chunkwise.budget"), r.f("chunkwise.max_compensation"));
    out << "\n";
  }
  if (level > 0 || masks.active()) {
    double dense = spdf_train_flops_per_token(double(n_sparsifiable), mc.d_model, mc.n_layers, T, mc.vocab_size, 0);
    double sparse = spdf_train_flops_per_token(double(n_sparsifiable), mc.d_model, mc.n_layers, T, mc.vocab_size, level);
    out << "sparsity " << level << " on " << format_count(double(n_sparsifiable)) << " weights: training FLOPs/token "
        << format_count(sparse) << " sparse vs " << format_count(dense) << " dense (" << std::setprecision(2)
        << dense / sparse << "x fewer)\n";
  }

  StepLogSettings log_settings;
  log_settings.first_step = step + 1, log_settings.total_steps = total_steps;
  log_settings.log_every = r.i("train.log_every"), log_settings.max_bad_steps = r.i("train.max_bad_steps");
  log_settings.flops_per_token = flops_per_token;
  log_settings.peak_flops = device.is_cuda() ? double(denv.world) * r.f("run.peak_tflops") * 1e12 : 0.0;
  StepLog log(log_settings, metrics, out, tokens_seen, skipped);
  auto checkpoint = [&](int64_t at_step) {
    json st = {{"step", at_step}, {"optimizer_steps", optimizer.steps()}, {"sampler", json::parse(sampler.state())},
               {"skipped_steps", log.skipped()}, {"tokens_seen", log.tokens_seen()},
               {"tokenizer_hash", tok.identity().hash},
               {"init_from", r.s("init.from")}, {"sparsity", level},
               {"model_config", json::parse(mc.to_json())}};
    if (!lora_base.is_null()) st["lora_base"] = lora_base;
    auto save = [&] {
      if (!is_main) return;
      CheckpointContents c{lora_base.is_null() ? named_parameters_of(*model) : trainable_parameters_of(*model),
                           optimizer.state_tensors(), rng_state(device), masks.tensors(), st.dump(2),
                           r.resolved_ini()};
      save_checkpoint(run_dir, at_step, c, r.i("train.keep"));
    };
    if (!dp) return save();
    dp->with_full_optimizer_state(optimizer, save);  // ZeRO-1: every rank's moments, unsharded
    dp->barrier();
  };
  auto run_eval = [&](int64_t at_step) {
    if (data.eval_sets.empty() || !is_main) return;  // data parallel: every rank holds the same weights
    json rec = {{"step", at_step}};
    std::ostringstream line;
    line << "eval step " << at_step;
    for (auto& set : data.eval_sets) {
      const std::string& name = set.name;
      const int64_t eval_b = r.i("train.eval_batch_size") > 0 ? r.i("train.eval_batch_size") : B;
      double v = evaluate(*model, set, T, eval_b, r.i("train.eval_batches"), device, precision,
                          chunkwise ? r.i("chunkwise.chunk") : 0);
      const std::string key = name == "val" ? "val_loss" : "val_loss." + name;
      rec[key] = v;
      if (name == "val") rec["val_ppl"] = std::exp(v), result.val_loss = v;
      line << " | " << key << " " << std::setprecision(4) << v;
    }
    metrics.write(rec);
    out << line.str() << "\n";
  };

  // 4. The loop. The host never waits for a step's values: the loss and gradient norm stay on the device, a
  // non-finite one makes the optimizer skip the step there, and they are read back (and reported) one step
  // later, while the next step runs. Checkpoints, evaluations and the end read everything first.
  result.first_step = step + 1;
  auto finish = [&] {  // the result's counters, once every launched step is recorded
    result.losses = log.losses();
    result.last_step = step;
    result.skipped_steps = log.skipped();
    return result;
  };
  // CUDA graphs: the whole step replayed from one capture where nothing in it talks to the host or other ranks.
  const std::string graph_setting = r.s("train.cuda_graph");
  const bool graph_possible =
      cuda_graphs_built() && device.is_cuda() && !dp && !masks.active() && inject_nan.empty() && !chunkwise &&
      !(lora && mc.lora_dropout > 0) && !model->checkpoint_layers;
  check(graph_setting != "true" || graph_possible, "train.cuda_graph = true needs a CUDA build and device, one process, ",
        "no sparsity masks, [chunkwise] mode = off, no [lora] dropout, no train.checkpoint_layers and no "
        "debug.inject_nan_steps; use auto or false");
  const double clip = r.f("optim.grad_clip") > 0 ? r.f("optim.grad_clip") : INFINITY;
  std::vector<torch::Tensor> param_tensors;
  for (auto& [n, p] : params) param_tensors.push_back(p);
  std::unique_ptr<CaptureStreamScope> capture_stream;
  std::unique_ptr<GraphedStep> graphed;
  if (graph_possible && graph_setting != "false") {
    capture_stream = std::make_unique<CaptureStreamScope>(device);
    graphed = std::make_unique<GraphedStep>(
        [&](const std::vector<Batch>& mb, const torch::Tensor& lr_t, const torch::Tensor& normaliser) {
          return deferred_step(*strategy, *model, mb, lr_t, normaliser, param_tensors, clip, optimizer, device,
                               precision);
        },
        [&] { optimizer.zero_grad(); }, device);
  }
  while (step < total_steps) {
    ++step;
    const double lr = schedule->lr(step);
    std::vector<Batch> micro;
    StepContext ctx;
    ctx.defer_readback = true;
    ctx.seed = step_seed(uint64_t(r.i("run.seed")), step, denv.rank);
    int64_t step_tokens = 0;
    for (int64_t a = 0; a < accum; ++a) {
      Batch global = sampler.next();  // every rank draws the same global batch and keeps its rows
      ctx.target_tokens += global.n_target_tokens, step_tokens += global.tokens.numel();
      micro.push_back((dp ? dp->shard(global) : global).to(device));
    }
    StepTensors t;
    torch::Tensor votes;  // data parallel: how many ranks asked to stop during this step (see below)
    if (graphed && graphed->graphable(micro)) {
      t = graphed->run(micro, lr, ctx.target_tokens);
    } else {
      if (dp) ctx.before_last_backward = [&] { dp->arm(); };
      optimizer.zero_grad();
      StepResult sr = run_under_autocast(*strategy, *model, micro, ctx, device, precision);
      if (dp) {  // gradients summed over ranks (each normalised by the global token count); the global loss and
                 // the ranks' stop requests in one sum
        dp->finish();
        const double ask = opt.stop_requested && opt.stop_requested() ? 1.0 : 0.0;
        auto summed = torch::stack({sr.loss_value.reshape({}), torch::full({}, ask, sr.loss_value.options())});
        dp->sum_(summed);
        sr.loss_value.copy_(summed[0]);
        votes = summed.narrow(0, 1, 1);
      }
      if (inject_nan.count(step)) {  // test hook: poison this step
        sr.loss_value.fill_(NAN);
        params.front().second.mutable_grad().fill_(NAN);
      }
      masks.apply_to_grads();
      // Nothing reaches the weights when the loss or the norm is not finite.
      t = clip_and_step(param_tensors, clip, optimizer, sr.loss_value, lr);
      if (dp && r.i("dist.zero") == 1) dp->broadcast_updated_parameters();
      masks.apply_to_weights();
      masks.apply_to_optimizer(optimizer);
    }
    // A stop request (SIGTERM before a pre-emption): one process acts on it after this step; data-parallel
    // ranks voted in the loss's sum, read back with it, so all of them stop after the same (next) step.
    const bool asked = !dp && opt.stop_requested && opt.stop_requested();
    log.launched(step, lr, step_tokens, t.loss, t.grad_norm, votes);
    log.settle(1);  // the previous step's values: ready while this step runs

    const bool last = step == total_steps;
    const bool stop_requested = !last && (dp ? log.stop_voted() : asked);
    const int64_t ckpt_every = r.i("train.ckpt_every"), eval_every = r.i("train.eval_every");
    const bool ckpt_due = last || stop_requested || (ckpt_every > 0 && step % ckpt_every == 0);
    const bool eval_due = eval_every > 0 && step % eval_every == 0 && !last && !stop_requested;
    const bool stop = opt.stop_at > 0 && step >= opt.stop_at && !last;
    if (last || ckpt_due || eval_due || stop) log.settle();
    const auto aside = std::chrono::steady_clock::now();  // evaluation and checkpoint: not in tokens/s
    if (eval_due) run_eval(step);
    if (stop) return finish();  // simulated crash: no final checkpoint
    if (ckpt_due) checkpoint(step);
    log.exclude(std::chrono::duration<double>(std::chrono::steady_clock::now() - aside).count());
    if (stop_requested) {
      out << "stopped on request after step " << step << ": checkpoint written; continue with --resume\n" << std::flush;
      result.stopped_on_request = true;
      return finish();
    }
  }
  run_eval(step);
  if (log.skipped()) out << log.skipped() << " step(s) were skipped for non-finite values\n";
  return finish();
}

}  // namespace cw
