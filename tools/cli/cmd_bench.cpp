// `chunkwise bench train`: the training step of ../shared/specs/anchors.md's configurations on random
// tokens (tokens/s, MFU, peak GPU memory), to run beside torch_baselines.py on the same card.
// `chunkwise bench order`: times the in-context ordering pipeline (exact kNN + greedy walk) on synthetic
// clustered embeddings, so its scale can be measured without a corpus of that size.
#include <sys/resource.h>

#include <chrono>
#include <iostream>

#ifdef CHUNKWISE_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "common/json.h"
#include "data/icp_order.h"
#include "checkpoints/tensor_io.h"
#include "models/attention.h"
#include "models/causal_lm.h"
#include "models/tuned_matmul.h"
#include "train/adamw.h"
#include "train/deferred_values.h"
#include "train/graphed_step.h"
#include "train/precision.h"
#include "train/step_profile.h"
#include "models/lora.h"
#include "train/chunkwise_step.h"
#include "train/step_strategy.h"
#include "train/model_setup.h"
#include "tools/cli/commands.h"
#include "tools/cli/options.h"

namespace cw::cli {

static int bench_order(const Args& args) {
  po::options_description desc("bench order options");
  int64_t docs, dim, k, block, clusters;
  std::string device;
  desc.add_options()("docs", po::value(&docs)->default_value(100000), "documents")(
      "dim", po::value(&dim)->default_value(256), "embedding dimensions")(
      "k", po::value(&k)->default_value(50), "neighbours")(
      "block", po::value(&block)->default_value(1024), "query rows per matrix product")(
      "clusters", po::value(&clusters)->default_value(1000), "topics the synthetic documents come from")(
      "device", po::value(&device)->default_value("auto"), "auto | cpu | cuda");
  po::positional_options_description pos;
  po::variables_map vm;
  if (!parse_args(args, desc, pos, vm, "chunkwise bench order [--docs 100000] [--device auto]")) return 0;
  check(docs >= 1 && dim >= 1 && k >= 1 && block >= 1 && clusters >= 1, "bench order: --docs, --dim, --k, --block ",
        "and --clusters must be at least 1");
  torch::Device dev = resolve_device(device);
  torch::manual_seed(1);
  auto centers = torch::randn({clusters, dim});
  auto topic = torch::randint(0, clusters, {docs}, torch::kInt64);
  auto emb = torch::nn::functional::normalize(centers.index_select(0, topic) + 0.7 * torch::randn({docs, dim}),
                                              torch::nn::functional::NormalizeFuncOptions().dim(1));
  auto t0 = std::chrono::steady_clock::now();
  KnnGraph g = knn_exact(emb, k, block, dev);
  if (dev.is_cuda()) torch::cuda::synchronize();
  double knn_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  t0 = std::chrono::steady_clock::now();
  int64_t dropped = 0;
  auto order = greedy_walk(g, nullptr, &dropped);
  double walk_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::vector<uint64_t> o(order.begin(), order.end());
  auto same_topic = (topic.index_select(0, torch::tensor(std::vector<int64_t>(order.begin(), order.end() - 1))) ==
                     topic.index_select(0, torch::tensor(std::vector<int64_t>(order.begin() + 1, order.end()))))
                        .to(torch::kFloat64).mean().item<double>();
  std::cout << "{\"bench\": \"order\", \"docs\": " << docs << ", \"dim\": " << dim << ", \"k\": " << k
            << ", \"device\": \"" << dev.str() << "\", \"knn_s\": " << knn_s << ", \"walk_s\": " << walk_s
            << ", \"total_s\": " << knn_s + walk_s << ", \"adjacent_same_topic\": " << same_topic
            << ", \"random_same_topic\": " << 1.0 / double(clusters) << "}\n";
  return 0;
}

// The process's peak resident memory so far (the CPU's counterpart of the allocator's peak on CUDA).
static double peak_rss_gib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) * 1024.0 / double(1ull << 30);  // Linux reports KiB
}

static int bench_train(const Args& args) {
  po::options_description desc("bench train options");
  std::string config, device_name, precision_name, attention, fused_setting, graph_setting, chunkwise, lora_targets;
  int64_t steps, warmup, loss_chunk, profile_runs, seq_len, batch, chunk, budget, lora_rank, rat_chunk, lact_chunk;
  std::string family;
  bool recompute_swiglu = false, checkpoint_layers = false;
  desc.add_options()("config", po::value(&config)->default_value("124m"), "124m (32 x 1024) | 350m (16 x 2048) | tiny")(
      "steps", po::value(&steps)->default_value(20), "timed steps")(
      "warmup", po::value(&warmup)->default_value(5), "untimed steps first")(
      "device", po::value(&device_name)->default_value("auto"), "auto | cpu | cuda")(
      "precision", po::value(&precision_name)->default_value("auto"), "auto | fp32 | bf16")(
      "loss-chunk", po::value(&loss_chunk)->default_value(0), "tokens per loss chunk (0 = all logits at once)")(
      "fused-kernels", po::value(&fused_setting)->default_value("auto"),
      "auto | true | false: fused RoPE, SwiGLU, add+RMSNorm and cross-entropy kernels (train.fused_kernels)")(
      "recompute-swiglu", po::bool_switch(&recompute_swiglu), "recompute the SwiGLU product in the backward pass "
      "(train.recompute_swiglu)")(
      "checkpoint-layers", po::bool_switch(&checkpoint_layers), "activation checkpointing: run each layer again in "
      "the backward pass (train.checkpoint_layers; no CUDA graph)")(
      "cuda-graph", po::value(&graph_setting)->default_value("auto"), "auto | true | false: replay the step from a "
      "CUDA graph (train.cuda_graph; auto: on CUDA)")(
      "attention", po::value(&attention)->default_value("auto"), "auto | flash | cudnn: SDPA's first choice "
      "(train.attention)")(
      "profile", po::value(&profile_runs)->default_value(0), "also profile this many steps: time per kernel and category")(
      "seq-len", po::value(&seq_len)->default_value(0), "tokens per sequence instead of the config's (long contexts)")(
      "batch", po::value(&batch)->default_value(0), "sequences per step instead of the config's")(
      "chunkwise", po::value(&chunkwise)->default_value("off"), "off | seco | spaco: chunk-wise back-propagation "
      "([chunkwise] mode; no CUDA graph)")(
      "chunk", po::value(&chunk)->default_value(128), "seco/spaco: tokens per chunk")(
      "budget", po::value(&budget)->default_value(8), "spaco: expected chunks back-propagated per sequence")(
      "lora-rank", po::value(&lora_rank)->default_value(0), "LoRA adapters of this rank, the rest frozen (0 = off; "
      "bf16 products keep the frozen projections in bf16)")(
      "lora-targets", po::value(&lora_targets)->default_value("q_proj,v_proj"), "LoRA: projections to adapt")(
      "family", po::value(&family)->default_value("llama"), "llama | rat | lact (the same sizes; docs/rat.md, "
      "docs/lact.md)")(
      "rat-chunk", po::value(&rat_chunk)->default_value(16), "rat: tokens per chunk of the recurrence")(
      "lact-chunk", po::value(&lact_chunk)->default_value(2048), "lact: tokens per fast-weight update, and the "
      "attention window");
  po::positional_options_description pos;
  po::variables_map vm;
  if (!parse_args(args, desc, pos, vm, "chunkwise bench train [--config 124m|350m]")) return 0;
  check(steps >= 1 && warmup >= 0 && loss_chunk >= 0 && profile_runs >= 0, "bench train: --steps must be at least 1; ",
        "--warmup, --loss-chunk and --profile at least 0");
  check(seq_len >= 0 && batch >= 0 && chunk >= 1 && budget >= 1 && lora_rank >= 0, "bench train: --seq-len, --batch ",
        "and --lora-rank must be at least 0 (0 = the config's / off), --chunk and --budget at least 1");
  check(chunkwise == "off" || chunkwise == "seco" || chunkwise == "spaco", "bench train: --chunkwise must be off, seco "
        "or spaco");
  ModelConfig c;
  int64_t B, T;
  c.vocab_size = 32000, c.tie_embeddings = false;
  if (config == "124m") c.d_model = 768, c.n_layers = 12, c.n_heads = 12, c.d_ff = 2048, B = 32, T = 1024;
  else if (config == "350m") c.d_model = 1024, c.n_layers = 24, c.n_heads = 16, c.d_ff = 2816, B = 16, T = 2048;
  else if (config == "tiny") c.d_model = 64, c.n_layers = 2, c.n_heads = 4, c.d_ff = 128, c.vocab_size = 512, B = 2, T = 64;
  else fail("--config must be 124m, 350m or tiny (a smoke test)");
  if (seq_len > 0) T = seq_len;
  if (batch > 0) B = batch;
  c.n_kv_heads = c.n_heads, c.max_seq_len = T;
  c.family = family, c.rat_chunk = rat_chunk, c.lact_chunk = c.lact_window = lact_chunk;
  c.lora_rank = lora_rank;
  for (size_t at = 0; lora_rank > 0 && at <= lora_targets.size();) {
    const size_t comma = std::min(lora_targets.find(',', at), lora_targets.size());
    c.lora_targets.push_back(lora_targets.substr(at, comma - at));
    at = comma + 1;
  }
  const torch::Device device = resolve_device(device_name);
  const std::string precision = resolve_precision(precision_name, device);
  configure_device_math(device);
  torch::manual_seed(0);
  auto model = build_model(c);
  model->loss_chunk_rows = loss_chunk;
  const bool fused = fused_kernels_wanted(fused_setting, device);
  model->fused_kernels = fused;
  model->recompute_swiglu = recompute_swiglu;
  model->checkpoint_layers = checkpoint_layers;
  set_attention_backend(attention);
  // The kernel SDPA picks for this shape (in the step's dtype), printed so the figures say what ran.
  const auto probe_dtype = precision == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  const auto probe = torch::empty({1, c.n_heads, T, c.head_dim()}, torch::TensorOptions().dtype(probe_dtype).device(device)).requires_grad_(true);
  const std::string attention_kernel = attention_backend_for(probe, probe, probe);
  if (lora_rank > 0) freeze_all_but_adapters(*model);
  model->to(device);
  if (lora_rank > 0 && precision == "bf16") keep_frozen_projections_in(*model, torch::kBFloat16);
  model->train();
  NamedTensors params = trainable_parameters_of(*model);
  std::vector<bool> decay;
  for (auto& [n, p] : params) decay.push_back(default_weight_decay(n, p, false, false));
  AdamW opt(params, decay, {0.9, 0.95, 1e-8, 0.1, device.is_cuda()});
  std::unique_ptr<StepStrategy> step;
  if (chunkwise == "off") step = std::make_unique<StandardStep>();
  else step = std::make_unique<ChunkwiseStep>(ChunkwiseOptions{chunk, chunkwise == "spaco" ? budget : 0, 0});
  Batch b;
  b.tokens = torch::randint(0, c.vocab_size, {B, T}, torch::TensorOptions().dtype(torch::kInt64).device(device));
  b.targets = torch::randint(0, c.vocab_size, {B, T}, torch::TensorOptions().dtype(torch::kInt64).device(device));
  b.positions = torch::arange(T, torch::TensorOptions().dtype(torch::kInt64).device(device)).unsqueeze(0).expand({B, T});
  b.n_target_tokens = B * T;
  std::vector<torch::Tensor> tensors;
  for (auto& [n, p] : params) tensors.push_back(p);
  const bool graphs =
      device.is_cuda() && cuda_graphs_built() && graph_setting != "false" && chunkwise == "off" && !checkpoint_layers;
  check(graph_setting != "true" || graphs, "--cuda-graph true needs a CUDA build and device, --chunkwise off and no ",
        "--checkpoint-layers");
  auto body = [&](const std::vector<Batch>& mb, const torch::Tensor& lr, const torch::Tensor& normaliser) {
    return deferred_step(*step, *model, mb, lr, normaliser, tensors, 1.0, opt, device, precision);
  };
  CaptureStreamScope stream_scope(device);
  std::unique_ptr<GraphedStep> graphed;
  if (graphs) graphed = std::make_unique<GraphedStep>(body, [&] { opt.zero_grad(); }, device);
  const auto lr_tensor = torch::full({1}, 3e-4, torch::TensorOptions().dtype(torch::kFloat32).device(device));
  DeferredValues values;
  auto one = [&] {  // the trainer's step: forward/backward, clip, AdamW (skipped on the device if not finite)
    StepTensors out;
    if (graphed) {
      out = graphed->run({b}, 3e-4, B * T);
    } else {
      opt.zero_grad();
      out = body({b}, lr_tensor, torch::Tensor());
    }
    values.push(torch::stack({out.loss.reshape({}), out.grad_norm.reshape({}).to(torch::kFloat64)}));
    while (values.size() > 1) values.pop();  // like the trainer: each step's values read one step late
  };
  // Peak memory over every step, warm-up included: a CUDA graph allocates its private pool while it is
  // captured (in the warm-up) and nothing afterwards, so a peak taken after the warm-up would miss it.
#ifdef CHUNKWISE_CUDA
  if (device.is_cuda()) torch::cuda::synchronize(), c10::cuda::CUDACachingAllocator::resetPeakStats(device.index() < 0 ? 0 : device.index());
#endif
  for (int64_t i = 0; i < warmup; ++i) one();
  // The warm-up's last steps are still queued on the GPU (values are read one step late): the clock starts
  // when they are done, or it would time about one step more than it counts (5 % of 20 steps).
  if (device.is_cuda()) torch::cuda::synchronize();
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < steps; ++i) one();
  if (device.is_cuda()) torch::cuda::synchronize();
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / double(steps);
  const double tok_s = double(B * T) / dt, flops = c.train_flops_per_token(T);
  double peak_gib = -1;
#ifdef CHUNKWISE_CUDA
  if (device.is_cuda()) {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
    peak_gib = double(stats.allocated_bytes[size_t(c10::CachingAllocator::StatType::AGGREGATE)].peak) / double(1ull << 30);
  }
#endif
  std::cout << "{\"bench\": \"train\", \"config\": \"" << config << "\", \"family\": \"" << family << "\""
            << (family == "rat" ? ", \"rat_chunk\": " + std::to_string(rat_chunk) : std::string())
            << (family == "lact" ? ", \"lact_chunk\": " + std::to_string(lact_chunk) : std::string())
            << ", \"device\": \"" << device.str()
            << "\", \"precision\": \"" << precision << "\", \"chunkwise\": \"" << chunkwise << "\""
            << (chunkwise != "off" ? ", \"chunk\": " + std::to_string(chunk) : std::string())
            << (chunkwise == "spaco" ? ", \"budget\": " + std::to_string(budget) : std::string())
            << (lora_rank > 0 ? ", \"lora_rank\": " + std::to_string(lora_rank) + ", \"lora_targets\": \"" +
                                    lora_targets + "\"" : std::string())
            << ", \"loss_chunk\": " << loss_chunk << ", \"fused\": " << (fused ? "true" : "false")
            << ", \"recompute_swiglu\": " << (recompute_swiglu ? "true" : "false")
            << ", \"checkpoint_layers\": " << (checkpoint_layers ? "true" : "false")
            << ", \"cuda_graph\": " << (graphs ? "true" : "false")
            << ", \"attention\": \"" << attention << "\", \"attention_kernel\": \"" << attention_kernel << "\""
            << ", \"B\": " << B << ", \"T\": " << T << ", \"tok_s\": "
            << std::llround(tok_s) << ", \"tflops\": " << tok_s * flops / 1e12 << ", \"mfu_vs_989\": "
            << tok_s * flops / 989e12 << ", \"peak_gib\": " << peak_gib << ", \"peak_rss_gib\": " << peak_rss_gib();
  if (tuned_products_enabled())  // CHUNKWISE_TUNED_PRODUCTS=1 (models/tuned_matmul.h): what the tuning chose
    std::cout << ", \"tuned_products\": " << json(tuned_products_summary()).dump();
  std::cout << "}\n";
  if (tuned_products_enabled()) std::cerr << tuned_products_summary(/*jsonl=*/true);
  if (profile_runs > 0) {  // where the step's time goes
    StepProfile p = profile_step(one, int(profile_runs), device.is_cuda());
    json cats = json::object(), top = json::array();
    for (auto& c : p.categories) cats[c.name] = c.ms;
    for (size_t i = 0; i < p.ops.size() && i < 25; ++i)
      top.push_back({{"name", p.ops[i].name.substr(0, 120)}, {"ms", p.ops[i].ms}, {"calls", p.ops[i].calls}});
    json gaps = json::array();
    for (const auto& g : p.gaps)
      gaps.push_back({{"before", g.before}, {"after", g.after}, {"ms", g.ms}, {"count", g.count}});
    json line = {{"bench", "train-profile"}, {"config", config}, {"device", device.str()}, {"step_ms", dt * 1e3},
                 {"time", p.device_time ? "GPU kernels" : "CPU ops (inclusive)"}, {"profiled_ms", p.total_ms},
                 {"categories_ms", cats}, {"top", top}};
    if (p.device_time) line["idle_ms"] = p.idle_ms, line["gaps"] = gaps;  // the GPU between its operations
    std::cout << line.dump() << "\n";
  }
  return 0;
}

int bench_main(const Args& args) {
  const char* usage = "usage: chunkwise bench train|order|serve [--help]";
  if (args.empty()) fail(usage);
  Args rest(args.begin() + 1, args.end());
  if (args[0] == "train") return bench_train(rest);
  if (args[0] == "order") return bench_order(rest);
  if (args[0] == "serve") return bench_serve_main(rest);
  fail(usage);
}

}  // namespace cw::cli
