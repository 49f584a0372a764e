// Hugging Face interchange: our export loads in transformers with the same logits; a model saved by
// transformers imports with the same logits; sharded bundles read back; [init] from a bundle trains;
// bad configs and shard indexes are clear errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "checkpoints/checkpoint.h"
#include "checkpoints/hf_bundle.h"
#include "common/error.h"
#include "models/llama.h"
#include "tests/test_util.h"
#include "train/model_setup.h"
#include "train/trainer.h"

using namespace cw;
using namespace cw::test;

static torch::Tensor logits_of(CausalLM& m, const torch::Tensor& ids) {
  torch::NoGradGuard ng;
  m.eval();
  auto pos = torch::arange(ids.size(1), torch::kInt64).unsqueeze(0).expand(ids.sizes()).contiguous();
  return m.logits(ids, pos, {});
}

TEST(HfBundle, TransformersLoadsOurExportWithTheSameLogits) {
  auto out = scratch_dir("hf-export");
  std::ostringstream log;
  TrainResult res = train(tiny_recipe(out, "run", 3), TrainOptions{false, 0, &log});
  LoadedCheckpoint ck = load_checkpoint(*latest_checkpoint(res.run_dir));
  ModelConfig c;  // the shape of tiny_recipe's model
  c.vocab_size = 400, c.d_model = 32, c.n_layers = 2, c.n_heads = 2, c.n_kv_heads = 2, c.d_ff = 128;
  c.max_seq_len = 32;
  Llama model(c);
  load_parameters(model, ck.model, "checkpoint");
  ExportOptions o;
  o.dtype = "fp32";
  export_bundle(ck.model, c, shared_tokenizer(), out / "bundle", o);
  EXPECT_TRUE(fs::exists(out / "bundle" / "tokenizer.model"));
  auto ids = torch::randint(0, 400, {2, 16}, torch::kInt64);
  save_tensors(out / "expect.safetensors", {{"ids", ids}, {"logits", logits_of(model, ids)}});
  std::string msg;
  EXPECT_EQ(run_command(python() + " " + source_dir() + "/tests/py/check_hf.py verify " + (out / "bundle").string() +
                            " " + (out / "expect.safetensors").string(), &msg), 0) << msg;

  // The bundle starts a new run; a recipe that contradicts its shape is refused with the keys named.
  Recipe cont = tiny_recipe(out, "from-bundle", 1);
  cont.set("init.from", (out / "bundle").string());
  cont.set("schedule.warmup_steps", "0");
  EXPECT_NO_THROW(train(cont, TrainOptions{false, 0, &log}));
  auto cont_ck = load_checkpoint(*latest_checkpoint(out / "from-bundle"));
  EXPECT_EQ(model_config_of_checkpoint(cont_ck.state_json, cont, 400).to_json(),
            ModelConfig::from_json(model_config_of_checkpoint(cont_ck.state_json, cont, 400).to_json()).to_json());
  EXPECT_EQ(model_config_of_checkpoint(cont_ck.state_json, cont, 400).d_ff, c.d_ff);
  Recipe bad = tiny_recipe(out, "bad", 1);
  bad.set("init.from", (out / "bundle").string());
  bad.set("schedule.warmup_steps", "0");
  bad.set("model.d_model", "64");
  EXPECT_NE(user_error_of([&] { train(bad, TrainOptions{false, 0, &log}); }).find("model.d_model"), std::string::npos);
}

TEST(HfBundle, ModelSavedByTransformersImportsWithTheSameLogits) {
  auto dir = scratch_dir("hf-import");
  std::string msg;
  ASSERT_EQ(run_command(python() + " " + source_dir() + "/tests/py/check_hf.py make " + (dir / "hf").string() + " " +
                            (dir / "logits.safetensors").string(), &msg), 0) << msg;
  ModelConfig c = read_hf_config(dir / "hf");
  EXPECT_EQ(c.d_model, 64);
  EXPECT_EQ(c.n_kv_heads, 2);
  Llama model(c);
  load_parameters(model, read_hf_weights(dir / "hf"), "transformers bundle");
  auto d = load_tensors(dir / "logits.safetensors");
  auto got = logits_of(model, d["ids"]);
  double err = (got - d["logits"]).abs().max().item<double>() / d["logits"].abs().max().item<double>();
  EXPECT_LE(err, 1e-4);
  // Its vocabulary (300) is smaller than the shared tokenizer's (400): training from it is refused.
  auto out = scratch_dir("hf-import-run");
  Recipe r = tiny_recipe(out, "from-small-vocab", 1);
  r.set("init.from", (dir / "hf").string());
  r.set("schedule.warmup_steps", "0");
  std::ostringstream log;
  EXPECT_NE(user_error_of([&] { train(r, TrainOptions{false, 0, &log}); }).find("vocabulary"), std::string::npos);
}

TEST(HfBundle, ShardedExportReadsBackAndBadBundlesAreRejected) {
  auto dir = scratch_dir("hf-shards");
  ModelConfig c;
  c.vocab_size = 400, c.d_model = 32, c.n_layers = 2, c.n_heads = 2, c.n_kv_heads = 2, c.d_ff = 64, c.max_seq_len = 32;
  Llama model(c);
  std::map<std::string, torch::Tensor> w;
  for (auto& [n, t] : named_parameters_of(model)) w[n] = t.detach().clone();
  ExportOptions o;
  o.dtype = "fp32";
  o.shard_bytes = 20000;
  export_bundle(w, c, shared_tokenizer(), dir / "b", o);
  EXPECT_TRUE(fs::exists(dir / "b" / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir / "b" / "model.safetensors"));
  auto back = read_hf_weights(dir / "b");
  ASSERT_EQ(back.size(), w.size());
  for (auto& [n, t] : w) EXPECT_TRUE(torch::equal(back[n], t)) << n;
  EXPECT_EQ(read_hf_config(dir / "b").d_ff, 64);

  write_text(dir / "precious" / "notes.txt", "keep me");
  EXPECT_NE(user_error_of([&] { export_bundle(w, c, shared_tokenizer(), dir / "precious", o); }).find("not a bundle"),
            std::string::npos);
  EXPECT_TRUE(fs::exists(dir / "precious" / "notes.txt"));
  export_bundle(w, c, shared_tokenizer(), dir / "b", o);  // replacing a bundle is fine
  write_text(dir / "b" / "model.safetensors.index.json", R"({"weight_map": {"x": "../../etc/passwd"}})");
  EXPECT_NE(user_error_of([&] { read_hf_weights(dir / "b"); }).find("plain file name"), std::string::npos);
  write_text(dir / "c" / "config.json", R"({"architectures": ["GPT2LMHeadModel"]})");
  EXPECT_NE(user_error_of([&] { read_hf_config(dir / "c"); }).find("not supported"), std::string::npos);
  write_text(dir / "d" / "config.json", R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": -3})");
  EXPECT_NE(user_error_of([&] { read_hf_config(dir / "d"); }).find("hidden_size"), std::string::npos);
  // Optional fields are type-checked: a number too large for an integer (found by the fuzzer), a string.
  const std::string base = R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, )";
  write_text(dir / "e" / "config.json", base + R"("max_position_embeddings": 1211111111111111111111111111118})");
  EXPECT_NE(user_error_of([&] { read_hf_config(dir / "e"); }).find("max_position_embeddings"), std::string::npos);
  write_text(dir / "e" / "config.json", base + R"("rope_theta": "big"})");
  EXPECT_NE(user_error_of([&] { read_hf_config(dir / "e"); }).find("rope_theta"), std::string::npos);
}
