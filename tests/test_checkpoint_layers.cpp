// Activation checkpointing (train.checkpoint_layers, models/activation_checkpoint.h): the loss and every
// gradient equal keeping the activations, in fp64 with packed documents, with LoRA adapters on a frozen model
// (whose layer inputs carry no gradient), with LoRA dropout (the recompute draws the first pass's masks), and
// under bf16 autocast even when the backward pass runs outside the autocast scope; through the trainer the losses
// are those of the run without it, with and without dropout.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "models/llama.h"
#include "models/lora.h"
#include "tests/test_util.h"
#include "train/precision.h"
#include "train/trainer.h"

using namespace cw;
using namespace cw::test;
using torch::indexing::Slice;

namespace {

ModelConfig config() {
  ModelConfig c;
  c.vocab_size = 13, c.d_model = 16, c.n_layers = 3, c.n_heads = 4, c.n_kv_heads = 2, c.d_ff = 24, c.max_seq_len = 32;
  return c;
}

Batch packed_batch() {
  Batch b;
  b.tokens = torch::randint(0, 13, {2, 20}, torch::kInt64);
  b.targets = torch::randint(0, 13, {2, 20}, torch::kInt64);
  b.positions = torch::arange(20, torch::kInt64).unsqueeze(0).repeat({2, 1});
  b.segments = torch::zeros({2, 20}, torch::kInt32);
  b.segments.index_put_({1, Slice(8, 20)}, 1);
  b.positions.index_put_({1, Slice(8, 20)}, torch::arange(12, torch::kInt64));
  b.has_segments = true;
  b.n_target_tokens = 40;
  return b;
}

struct Result {
  double loss;
  std::vector<torch::Tensor> grads;  // undefined where a parameter got none
};

// Forward under PRECISION's autocast; the backward pass inside the scope or after it.
Result run(Llama& m, const Batch& b, bool checkpoint, const std::string& precision = "fp32",
           bool backward_outside = false) {
  m.checkpoint_layers = checkpoint;
  m.zero_grad();
  torch::Tensor loss;
  {
    AutocastScope autocast(torch::kCPU, precision);
    loss = m.loss_sum(b);
    if (!backward_outside) loss.backward();
  }
  if (backward_outside) loss.backward();
  Result r{loss.item<double>(), {}};
  for (auto& p : m.parameters()) r.grads.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
  return r;
}

void expect_same(const Result& a, const Result& b, const std::string& what) {
  EXPECT_EQ(a.loss, b.loss) << what;
  ASSERT_EQ(a.grads.size(), b.grads.size());
  for (size_t i = 0; i < a.grads.size(); ++i) {
    ASSERT_EQ(a.grads[i].defined(), b.grads[i].defined()) << what << ", parameter " << i;
    if (a.grads[i].defined()) EXPECT_TRUE(torch::equal(a.grads[i], b.grads[i])) << what << ", parameter " << i;
  }
}

}  // namespace

TEST(CheckpointLayers, LossAndGradientsEqualKeepingTheActivations) {
  torch::manual_seed(1);
  Llama m(config());
  m.to(torch::kFloat64);
  Batch b = packed_batch();
  expect_same(run(m, b, true), run(m, b, false), "fp64, packed documents");
}

TEST(CheckpointLayers, AdaptersOnAFrozenModelGetTheirGradients) {  // the layers' inputs carry no gradient
  torch::manual_seed(2);
  ModelConfig c = config();
  c.lora_rank = 2, c.lora_targets = {"q_proj", "down_proj"};
  Llama m(c);
  m.to(torch::kFloat64);
  {
    torch::NoGradGuard ng;
    for (auto& p : m.named_parameters())
      if (is_lora_parameter(p.key())) p.value().normal_(0.0, 0.3);
      else p.value().requires_grad_(false);
  }
  Batch b = packed_batch();
  Result with = run(m, b, true), without = run(m, b, false);
  expect_same(with, without, "LoRA on a frozen model");
  int64_t adapters = 0;
  for (auto& g : with.grads) adapters += g.defined();
  EXPECT_EQ(adapters, 2 * 2 * 3);
}

TEST(CheckpointLayers, RecomputeDrawsTheFirstPassDropoutMasks) {
  ModelConfig c = config();
  c.lora_rank = 2, c.lora_dropout = 0.5, c.lora_targets = {"q_proj", "v_proj", "up_proj"};
  torch::manual_seed(4);
  Llama m(c);
  m.to(torch::kFloat64);
  {
    torch::NoGradGuard ng;
    for (auto& p : m.named_parameters())
      if (is_lora_parameter(p.key())) p.value().normal_(0.0, 0.3);
  }
  Batch b = packed_batch();
  torch::manual_seed(5);
  Result with = run(m, b, true);
  torch::manual_seed(5);
  Result without = run(m, b, false);
  expect_same(with, without, "LoRA dropout 0.5");
  torch::manual_seed(6);  // and other masks do change the result (the test can see dropout)
  EXPECT_NE(run(m, b, false).loss, without.loss);
}

TEST(CheckpointLayers, RecomputeRunsUnderTheFirstPassAutocast) {
  torch::manual_seed(3);
  Llama m(config());
  Batch b = packed_batch();
  // The backward pass after the autocast scope ended: the recompute must still run in bf16.
  expect_same(run(m, b, true, "bf16", /*backward_outside=*/true), run(m, b, false, "bf16", true), "bf16 autocast");
}

TEST(Training, CheckpointedLayersTrainLikeKeptActivations) {
  auto out = scratch_dir("train-checkpoint-layers");
  std::ostringstream log;
  TrainResult plain = train(tiny_recipe(out, "plain", 6), TrainOptions{false, 0, &log});
  Recipe r = tiny_recipe(out, "checkpointed", 6);
  r.set("train.checkpoint_layers", "true");
  TrainResult checkpointed = train(r, TrainOptions{false, 0, &log});
  EXPECT_EQ(checkpointed.losses, plain.losses);
  EXPECT_EQ(checkpointed.val_loss, plain.val_loss);
  // LoRA with dropout: the recompute draws the masks the first pass drew.
  auto dropout_run = [&](const std::string& name, bool checkpoint) {
    Recipe d = tiny_recipe(out, name, 6);
    d.set("lora.rank", "4");
    d.set("lora.dropout", "0.3");
    d.set("train.checkpoint_layers", checkpoint ? "true" : "false");
    return train(d, TrainOptions{false, 0, &log});
  };
  EXPECT_EQ(dropout_run("dropout-checkpointed", true).losses, dropout_run("dropout", false).losses);
}
