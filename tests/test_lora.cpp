// LoRA (models/lora.h): fresh adapters change nothing; in fp64 the adapted model's logits and its adapters'
// gradients equal those of a plain model whose weights are W + (alpha / r) B A built with autograd; merge_lora
// gives a plain model with the same logits; SeCO with adapters equals the standard step (the paper's setting);
// through the trainer only the adapters move, a run resumes bitwise, export merges the adapters into a bundle
// whose model gives the adapted logits, and export --adapter writes them in PEFT's format, which peft applies to
// the base bundle with the same logits; bad settings name their key.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "checkpoints/checkpoint.h"
#include "checkpoints/hf_bundle.h"
#include "checkpoints/tensor_io.h"
#include "common/error.h"
#include "common/json.h"
#include "models/llama.h"
#include "models/lora.h"
#include "tests/test_util.h"
#include "train/chunkwise_step.h"
#include "train/model_setup.h"
#include "train/recipe.h"
#include "train/trainer.h"

using namespace cw;
using namespace cw::test;

namespace {

const std::vector<std::string> kAll = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

ModelConfig base_config() {
  ModelConfig c;
  c.vocab_size = 13, c.d_model = 16, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.d_ff = 24;
  c.max_seq_len = 64;
  return c;
}

ModelConfig lora_config(const std::vector<std::string>& targets, int64_t rank = 3) {
  ModelConfig c = base_config();
  c.lora_rank = rank, c.lora_alpha = 6, c.lora_targets = targets;
  return c;
}

std::map<std::string, torch::Tensor> weights_of(torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> out;
  for (auto& p : m.named_parameters()) out[p.key()] = p.value().detach().clone();
  return out;
}

Batch random_batch(int64_t rows, int64_t T) {
  Batch b;
  b.tokens = torch::randint(0, 13, {rows, T}, torch::kInt64);
  b.targets = torch::randint(0, 13, {rows, T}, torch::kInt64);
  b.positions = torch::arange(T, torch::kInt64).unsqueeze(0).repeat({rows, 1});
  b.n_target_tokens = rows * T;
  return b;
}

// Gives every adapter's B random values (a fresh one is zero and would hide mistakes in the update).
void randomise_adapters(torch::nn::Module& m) {
  torch::NoGradGuard ng;
  for (auto& p : m.named_parameters())
    if (is_lora_parameter(p.key())) p.value().normal_(0.0, 0.3);
}

double max_relative(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>() / std::max(b.abs().max().item<double>(), 1e-300);
}

}  // namespace

TEST(Lora, FreshAdaptersChangeNothing) {
  torch::manual_seed(1);
  Llama base(base_config());
  Llama adapted(lora_config(kAll));
  load_parameters(adapted, weights_of(base), "base", is_lora_parameter);
  Batch b = random_batch(2, 12);
  EXPECT_TRUE(torch::equal(adapted.logits(b.tokens, b.positions, {}), base.logits(b.tokens, b.positions, {})));
  int64_t adapters = 0;
  for (auto& p : adapted.named_parameters()) adapters += is_lora_parameter(p.key());
  EXPECT_EQ(adapters, 2 * 7 * 2);  // A and B, 7 projections, 2 layers
}

TEST(Lora, LogitsAndAdapterGradientsEqualAPlainModelWithMergedWeights) {
  for (const auto& targets : {std::vector<std::string>{"q_proj", "v_proj"}, kAll}) {
    torch::manual_seed(2);
    ModelConfig c = lora_config(targets);
    Llama adapted(c);
    adapted.to(torch::kFloat64);
    randomise_adapters(adapted);
    Llama plain(base_config());
    plain.to(torch::kFloat64);
    auto w = weights_of(adapted);
    // The plain model's projections become W + s B A of leaf copies of the adapters (autograd, not lora.cpp).
    std::map<std::string, torch::Tensor> leaves;
    for (auto& p : plain.named_parameters()) {
      if (p.key().size() < 7 || p.key().substr(p.key().size() - 7) != ".weight") continue;
      const std::string prefix = p.key().substr(0, p.key().size() - 7);
      if (!w.count(prefix + ".lora_A.weight")) {
        p.value().detach().copy_(w.at(p.key()));
        continue;
      }
      auto A = leaves[prefix + ".lora_A.weight"] = w.at(prefix + ".lora_A.weight").clone().requires_grad_(true);
      auto B = leaves[prefix + ".lora_B.weight"] = w.at(prefix + ".lora_B.weight").clone().requires_grad_(true);
      auto merged = w.at(p.key()) + c.lora_scale() * torch::matmul(B, A);
      // Route the module's weight member (what its forward reads) to the merged tensor.
      for (auto& m : plain.named_modules("", /*include_self=*/false))
        if (m.key() == prefix) m.value()->as<torch::nn::LinearImpl>()->weight = merged;
    }
    for (auto& p : plain.named_parameters())
      if (w.count(p.key())) p.value().detach().copy_(w.at(p.key()));
    Batch b = random_batch(2, 10);
    auto loss_of = [&](CausalLM& m) { return m.loss_sum(b); };
    auto la = loss_of(adapted), lp = loss_of(plain);
    EXPECT_NEAR(la.item<double>(), lp.item<double>(), 1e-12 * std::abs(lp.item<double>()));
    la.backward(), lp.backward();
    ASSERT_EQ(leaves.size(), 2 * targets.size() * 2);
    for (auto& p : adapted.named_parameters()) {
      if (!is_lora_parameter(p.key())) continue;
      EXPECT_LT(max_relative(p.value().grad(), leaves.at(p.key()).grad()), 1e-10) << p.key();
    }
  }
}

TEST(Lora, MergedWeightsGiveThePlainModelTheAdaptedLogits) {
  torch::manual_seed(3);
  ModelConfig c = lora_config(kAll);
  Llama adapted(c);
  adapted.to(torch::kFloat64);
  randomise_adapters(adapted);
  auto merged = merge_lora(weights_of(adapted), c);
  for (auto& [name, t] : merged) EXPECT_FALSE(is_lora_parameter(name)) << name;
  Llama plain(base_config());
  plain.to(torch::kFloat64);
  load_parameters(plain, merged, "merged");
  Batch b = random_batch(2, 10);
  adapted.eval();
  EXPECT_LT(max_relative(plain.logits(b.tokens, b.positions, {}), adapted.logits(b.tokens, b.positions, {})), 1e-12);
}

TEST(Lora, SecoWithAFrozenBaseEqualsTheStandardStep) {  // the SeCO paper's setting
  torch::manual_seed(4);
  Llama adapted(lora_config({"q_proj", "v_proj"}));
  adapted.to(torch::kFloat64);
  randomise_adapters(adapted);
  for (auto& p : adapted.named_parameters())
    if (!is_lora_parameter(p.key())) p.value().requires_grad_(false);
  Batch b = random_batch(2, 48);
  StandardStep standard;
  ChunkwiseStep seco({16, 0, 0});
  standard.run(adapted, {b});
  std::map<std::string, torch::Tensor> want;
  for (auto& p : adapted.named_parameters())
    if (p.value().requires_grad()) want[p.key()] = p.value().grad().clone(), p.value().mutable_grad() = torch::Tensor();
  seco.run(adapted, {b});
  ASSERT_EQ(want.size(), 8u);
  for (auto& p : adapted.named_parameters()) {
    EXPECT_EQ(p.value().grad().defined(), p.value().requires_grad()) << p.key();
    if (p.value().requires_grad()) EXPECT_LT(max_relative(p.value().grad(), want.at(p.key())), 1e-11) << p.key();
  }
}

TEST(Training, LoraMovesOnlyTheAdaptersResumesBitwiseAndExportsMerged) {
  auto out = scratch_dir("train-lora");
  std::ostringstream log;
  TrainOptions o;
  o.out = &log;
  TrainResult base = train(tiny_recipe(out, "base", 3), o);
  auto lora_recipe = [&](const std::string& name) {
    Recipe r = tiny_recipe(out, name, 8);
    r.set("init.from", base.run_dir.string());
    r.set("lora.rank", "4");
    r.set("lora.targets", "q_proj, v_proj,o_proj");
    r.set("optim.lr", "1e-2");
    return r;
  };
  TrainResult full = train(lora_recipe("lora"), o);
  EXPECT_LT(full.val_loss, base.val_loss) << log.str();
  EXPECT_NE(log.str().find("LoRA rank 4 on q_proj, v_proj, o_proj: 1.5K trainable parameters"), std::string::npos)
      << log.str();

  auto before = load_checkpoint(*latest_checkpoint(base.run_dir)), after = load_checkpoint(*latest_checkpoint(full.run_dir));
  // The checkpoint holds the adapters alone; its base is read again from the base run's checkpoint.
  for (auto& [name, t] : after.model) EXPECT_TRUE(is_lora_parameter(name)) << name << " saved with the adapters";
  EXPECT_EQ(json::parse(after.state_json).at("lora_base").at("from").get<std::string>(),
            fs::absolute(*latest_checkpoint(base.run_dir)).string());
  int64_t adapters = 0;
  for (auto& [name, t] : checkpoint_weights(after)) {
    if (is_lora_parameter(name)) {
      ++adapters;
      EXPECT_GT(t.abs().max().item<double>(), 0.0) << name;
      continue;
    }
    EXPECT_TRUE(torch::equal(t, before.model.at(name))) << name << " moved";
  }
  EXPECT_EQ(adapters, 2 * 3 * 2);
  for (auto& [name, t] : after.optimizer) EXPECT_NE(name.find("lora_"), std::string::npos) << name;

  Recipe crashy = lora_recipe("lora-crashy");
  o.stop_at = 5;
  train(crashy, o);
  o.stop_at = 0, o.resume = true;
  TrainResult resumed = train(crashy, o);
  ASSERT_EQ(resumed.losses.size(), 5u);
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(resumed.losses[i], full.losses[i + 3]) << "step " << i + 4;

  // A full fine-tuning run from the LoRA run starts from the merged weights.
  Recipe dense = tiny_recipe(out, "dense-after-lora", 2);
  dense.set("init.from", full.run_dir.string());
  std::ostringstream dense_log;
  train(dense, TrainOptions{false, 0, &dense_log});
  EXPECT_NE(dense_log.str().find("merged the LoRA adapters of"), std::string::npos) << dense_log.str();

  // Export merges the adapters: a plain model from the bundle gives the adapted model's logits.
  std::string cli;
  const fs::path bundle = out / "bundle";
  ASSERT_EQ(run_command(chunkwise_bin() + " export " + full.run_dir.string() + " " + bundle.string() +
                            " --dtype fp32 2>&1", &cli), 0) << cli;
  // The adapters alone in PEFT's format: peft applies them to the base bundle and gets the merged bundle's logits.
  const fs::path base_bundle = out / "base-bundle", adapter_dir = out / "adapter";
  ASSERT_EQ(run_command(chunkwise_bin() + " export " + base.run_dir.string() + " " + base_bundle.string() +
                            " --dtype fp32 2>&1", &cli), 0) << cli;
  ASSERT_EQ(run_command(chunkwise_bin() + " export " + full.run_dir.string() + " " + adapter_dir.string() +
                            " --adapter --dtype fp32 2>&1", &cli), 0) << cli;
  EXPECT_EQ(run_command(python() + " " + source_dir() + "/tests/py/check_hf.py peft " + base_bundle.string() + " " +
                            adapter_dir.string() + " " + bundle.string() + " 2>&1", &cli), 0) << cli;
  EXPECT_NE(run_command(chunkwise_bin() + " export " + base.run_dir.string() + " " + (out / "no-adapters").string() +
                            " --adapter 2>&1", &cli), 0);
  EXPECT_NE(cli.find("holds no LoRA adapters"), std::string::npos) << cli;
  ASSERT_EQ(run_command(chunkwise_bin() + " sample " + full.run_dir.string() + " --prompt 'def' --max-new-tokens 5 "
                        "--temperature 0 2>&1", &cli), 0) << cli;  // the adapted model from its checkpoint
  auto bundle_weights = read_hf_weights(bundle);
  for (auto& [name, t] : bundle_weights) EXPECT_FALSE(is_lora_parameter(name)) << name;
  ModelConfig mc = ModelConfig::from_json(json::parse(after.state_json).at("model_config").dump());
  Llama adapted(mc);
  load_parameters(adapted, checkpoint_weights(after), "checkpoint");
  ModelConfig plain_config = mc;
  plain_config.lora_rank = 0, plain_config.lora_targets.clear();
  Llama plain(plain_config);
  load_parameters(plain, bundle_weights, "bundle");
  adapted.eval(), plain.eval();
  Batch b = random_batch(2, 16);
  b.tokens.remainder_(mc.vocab_size);
  EXPECT_LT(max_relative(plain.logits(b.tokens, b.positions, {}), adapted.logits(b.tokens, b.positions, {})), 1e-5);
}

// A LoRA checkpoint names its base; a base that changed (or vanished) since is refused, not silently used.
TEST(Training, LoraCheckpointsRefuseABaseThatChanged) {
  auto out = scratch_dir("train-lora-base");
  std::ostringstream log;
  TrainResult a = train(tiny_recipe(out, "base-a", 3), TrainOptions{false, 0, &log});
  Recipe other = tiny_recipe(out, "base-b", 3);
  other.set("run.seed", "11");
  TrainResult b = train(other, TrainOptions{false, 0, &log});
  const fs::path base = out / "my-base";
  fs::copy(*latest_checkpoint(a.run_dir), base, fs::copy_options::recursive);
  Recipe r = tiny_recipe(out, "lora", 3);
  r.set("init.from", base.string());
  r.set("lora.rank", "2");
  TrainResult lora = train(r, TrainOptions{false, 0, &log});
  std::string cli;
  const std::string sample = chunkwise_bin() + " sample " + lora.run_dir.string() + " --max-new-tokens 2 2>&1";
  ASSERT_EQ(run_command(sample, &cli), 0) << cli;
  fs::remove_all(base);
  EXPECT_NE(run_command(sample, &cli), 0);
  EXPECT_NE(cli.find("which no longer exists"), std::string::npos) << cli;
  fs::copy(*latest_checkpoint(b.run_dir), base, fs::copy_options::recursive);  // another model at the same path
  EXPECT_NE(run_command(sample, &cli), 0);
  EXPECT_NE(cli.find("has changed since they were trained"), std::string::npos) << cli;
  r.set("train.steps", "4");
  std::string msg = user_error_of([&] { train(r, TrainOptions{true, 0, &log}); });  // --resume
  EXPECT_NE(msg.find("has changed since they were trained"), std::string::npos) << msg;
}

// Under bf16 autocast the products read the frozen projections in bf16 either way: keeping them in bf16 halves
// their memory and changes no step.
TEST(Training, LoraWithTheBaseInBf16TrainsBitwiseLikeTheFp32Base) {
  auto out = scratch_dir("train-lora-bf16");
  std::ostringstream log;
  auto run = [&](const std::string& name, const std::string& base_dtype) {
    Recipe r = tiny_recipe(out, name, 4);
    r.set("run.precision", "bf16");
    r.set("lora.rank", "4");
    r.set("lora.targets", "q_proj,v_proj,up_proj");
    r.set("lora.base_dtype", base_dtype);
    return train(r, TrainOptions{false, 0, &log});
  };
  TrainResult fp32 = run("fp32-base", "fp32"), bf16 = run("bf16-base", "auto");
  EXPECT_EQ(bf16.losses, fp32.losses);
  EXPECT_EQ(bf16.val_loss, fp32.val_loss);
  auto ck = load_checkpoint(*latest_checkpoint(bf16.run_dir));
  EXPECT_EQ(ck.model.at("model.layers.0.self_attn.k_proj.weight").scalar_type(), torch::kBFloat16);
  EXPECT_EQ(ck.model.at("model.layers.0.self_attn.q_proj.lora_A.weight").scalar_type(), torch::kFloat32);
  EXPECT_EQ(ck.model.at("model.embed_tokens.weight").scalar_type(), torch::kFloat32);
  EXPECT_EQ(ck.model.at("model.norm.weight").scalar_type(), torch::kFloat32);
}

TEST(Training, LoraSettingsThatCannotWorkAreRefused) {
  auto out = scratch_dir("train-lora-bad");
  std::ostringstream log;
  Recipe r = tiny_recipe(out, "bad", 2);
  r.set("lora.rank", "4");
  r.set("lora.targets", "q_proj,qkv");
  std::string msg = user_error_of([&] { train(r, TrainOptions{false, 0, &log}); });
  EXPECT_NE(msg.find("'qkv'"), std::string::npos) << msg;
  r.set("lora.targets", "q_proj");
  r.set("sparsity.level", "0.5");
  msg = user_error_of([&] { train(r, TrainOptions{false, 0, &log}); });
  EXPECT_NE(msg.find("[lora] rank and [sparsity] level"), std::string::npos) << msg;
  r.set("sparsity.level", "0");
  r.set("lora.base_dtype", "bf16");  // with fp32 products
  msg = user_error_of([&] { train(r, TrainOptions{false, 0, &log}); });
  EXPECT_NE(msg.find("lora.base_dtype = bf16 needs run.precision = bf16"), std::string::npos) << msg;
  EXPECT_NE(user_error_of([&] { r.set("lora.rank", "-1"); }).find("lora.rank"), std::string::npos);
  EXPECT_NE(user_error_of([&] { r.set("lora.dropout", "1"); }).find("lora.dropout"), std::string::npos);
}
