// SeCO and SpaCO (train/chunkwise_step.h) against full-sequence training: in fp64, SeCO's loss and gradients
// equal the standard step's (aligned and ragged chunks, packed documents, grouped-query heads, micro-batches);
// SpaCO with a budget of every chunk is SeCO bit for bit; its expectation over every draw is SeCO's gradient,
// and the mean of many draws converges to it (without the compensation it would not); a chunk's keys/values
// from the no-gradient pass equal the re-forward's bit for bit; the buffered keys equal the joined ones; through the trainer, SeCO trains like the standard step, a SpaCO run resumes
// bitwise, and SeCO on two ranks matches one process.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>

#include "common/error.h"
#include "common/json.h"
#include "models/llama.h"
#include "tests/test_util.h"
#include "train/chunkwise_step.h"
#include "train/recipe.h"
#include "train/trainer.h"

using namespace cw;
using namespace cw::test;
using torch::indexing::Slice;

namespace {

ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab_size = 11, c.d_model = 16, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.d_ff = 24;
  c.max_seq_len = 512;
  return c;
}

// ROWS sequences of T tokens; with DOCS > 1 each row packs that many documents (positions restart, segments).
Batch random_batch(int64_t rows, int64_t T, int64_t docs = 1) {
  Batch b;
  b.tokens = torch::randint(0, 11, {rows, T}, torch::kInt64);
  b.targets = torch::randint(0, 11, {rows, T}, torch::kInt64);
  b.targets.index_put_({0, Slice(0, 5)}, kIgnoreIndex);
  b.positions = torch::arange(T, torch::kInt64).unsqueeze(0).repeat({rows, 1});
  if (docs > 1) {
    const int64_t len = (T + docs - 1) / docs;
    auto idx = torch::arange(T, torch::kInt64);
    b.segments = (idx / len).to(torch::kInt32).unsqueeze(0).repeat({rows, 1});
    b.positions = (idx % len).unsqueeze(0).repeat({rows, 1});
    b.has_segments = true;
  }
  b.n_target_tokens = (b.targets != kIgnoreIndex).sum().item<int64_t>();
  return b;
}

// Columns [S, S + N) of a batch with segments: the chunk a chunk forward takes.
Batch columns(const Batch& b, int64_t s, int64_t n) {
  Batch c;
  c.tokens = b.tokens.narrow(1, s, n), c.targets = b.targets.narrow(1, s, n);
  c.positions = b.positions.narrow(1, s, n), c.segments = b.segments.narrow(1, s, n), c.has_segments = true;
  return c;
}

std::vector<torch::Tensor> take_grads(torch::nn::Module& m) {
  std::vector<torch::Tensor> g;
  for (auto& p : m.parameters()) {  // zeros where nothing was back-propagated (SpaCO may draw no chunk)
    g.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
    p.mutable_grad() = torch::Tensor();
  }
  return g;
}

// Largest |a - b| over the largest |b|, over all tensors.
double max_relative(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i)
    num = std::max(num, (a[i] - b[i]).abs().max().item<double>()), den = std::max(den, b[i].abs().max().item<double>());
  return num / den;
}

double squared_distance(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += (a[i] - b[i]).pow(2).sum().item<double>();
  return s;
}

struct Fp64Model {
  std::shared_ptr<Llama> model;
  Fp64Model() {
    torch::manual_seed(5);
    model = std::make_shared<Llama>(tiny_config());
    model->to(torch::kFloat64);
  }
};

void expect_seco_equals_full(const std::vector<Batch>& micro, int64_t chunk, const std::string& what,
                             int64_t loss_chunk = 0) {
  Fp64Model m;
  m.model->loss_chunk_rows = loss_chunk;
  StandardStep standard;
  const double full_loss = standard.run(*m.model, micro).loss;
  auto full = take_grads(*m.model);
  ChunkwiseStep seco({chunk, 0, 0});
  const double seco_loss = seco.run(*m.model, micro).loss;
  auto chunked = take_grads(*m.model);
  EXPECT_NEAR(seco_loss, full_loss, 1e-12 * full_loss) << what;
  EXPECT_LT(max_relative(chunked, full), 1e-11) << what;
  EXPECT_EQ(seco.last_backpropagated(), seco.last_chunks()) << what;
}

}  // namespace

TEST(Seco, Fp64GradientsEqualFullSequenceTraining) {  // the spec's check: T 512, chunks of 64
  torch::manual_seed(1);
  expect_seco_equals_full({random_batch(2, 512)}, 64, "T 512, c 64");
}

TEST(Seco, RaggedChunksPackedDocumentsAndMicroBatchesEqualFullTraining) {
  torch::manual_seed(2);
  expect_seco_equals_full({random_batch(2, 96, 3)}, 17, "T 96 in 3 documents, c 17 (last chunk 11)");
  expect_seco_equals_full({random_batch(1, 40), random_batch(2, 40, 2)}, 7, "two micro-batches, c 7");
  expect_seco_equals_full({random_batch(2, 40)}, 64, "one chunk longer than the sequence");
  expect_seco_equals_full({random_batch(2, 40)}, 1, "chunks of one token");
  expect_seco_equals_full({random_batch(2, 40, 2)}, 16, "the loss in chunks of 5 rows", /*loss_chunk=*/5);
}

TEST(Seco, ChunkedEvaluationEqualsTheWholeSequencesLoss) {  // what chunk-wise runs evaluate with
  torch::manual_seed(9);
  Fp64Model m;
  Batch b = random_batch(2, 90, 3);
  const double want = m.model->loss_sum(b).item<double>();
  for (int64_t chunk : {1, 16, 64, 128}) {
    auto got = chunked_loss_sum(*m.model, b, chunk);
    EXPECT_FALSE(got.requires_grad());
    EXPECT_NEAR(got.item<double>(), want, 1e-12 * want) << "chunks of " << chunk;
  }
}

TEST(Spaco, BudgetOfEveryChunkIsSecoBitwise) {
  torch::manual_seed(3);
  std::vector<Batch> micro{random_batch(2, 64, 2)};
  Fp64Model m;
  ChunkwiseStep seco({16, 0, 0}), spaco({16, 4, 0});
  const double a = seco.run(*m.model, micro).loss;
  auto ga = take_grads(*m.model);
  StepContext ctx;
  ctx.seed = 77;
  const double b = spaco.run(*m.model, micro, ctx).loss;
  auto gb = take_grads(*m.model);
  EXPECT_EQ(a, b);
  for (size_t i = 0; i < ga.size(); ++i) EXPECT_TRUE(torch::equal(ga[i], gb[i])) << i;
}

TEST(Spaco, MeanOfManyGradientsConvergesToSecosAndTheLossIsTheWholeSequences) {
  torch::manual_seed(4);
  std::vector<Batch> micro{random_batch(2, 64)};
  Fp64Model m;
  ChunkwiseStep seco({16, 0, 0});  // 4 chunks
  const double seco_loss = seco.run(*m.model, micro).loss;
  auto want = take_grads(*m.model);

  // budget 2 of 4: each chunk back-propagated with probability 1/2, its pass scaled by 2. Unscaled, the same
  // draws estimate a different vector (the test of the compensation).
  const int n = 400;
  std::vector<torch::Tensor> mean, mean_unscaled, sq;
  double single_error = 0;
  int64_t backpropagated = 0;
  for (int draw = 0; draw < n; ++draw) {
    StepContext ctx;
    ctx.seed = uint64_t(1000 + draw);
    ChunkwiseStep spaco({16, 2, 0});
    EXPECT_NEAR(spaco.run(*m.model, micro, ctx).loss, seco_loss, 1e-12 * seco_loss);
    backpropagated += spaco.last_backpropagated();
    auto g = take_grads(*m.model);
    single_error += squared_distance(g, want) / n;
    for (size_t i = 0; i < g.size(); ++i) {
      if (mean.size() <= i) mean.push_back(torch::zeros_like(g[i])), sq.push_back(torch::zeros_like(g[i])),
                            mean_unscaled.push_back(torch::zeros_like(g[i]));
      mean[i] += g[i] / n, sq[i] += g[i].pow(2) / n, mean_unscaled[i] += g[i] / (2.0 * n);
    }
  }
  EXPECT_NEAR(double(backpropagated) / n, 2.0, 0.3);  // about budget chunks per sequence
  double variance = 0;  // summed over coordinates: E|mean - want|^2 = variance / n when unbiased
  for (size_t i = 0; i < mean.size(); ++i) variance += (sq[i] - mean[i].pow(2)).sum().item<double>();
  const double error = squared_distance(mean, want);
  EXPECT_LT(error, 3.0 * variance / n) << "single-draw error " << single_error;
  EXPECT_LT(error, 0.02 * single_error);
  EXPECT_GT(squared_distance(mean_unscaled, want), 10.0 * variance / n) << "the compensation made no difference";
}

TEST(Spaco, ExpectationOverEveryDrawIsSecosGradient) {  // unbiased exactly, not just on average of samples
  torch::manual_seed(8);
  Batch b = random_batch(2, 40, 2);
  Fp64Model m;
  const double normaliser = double(b.n_target_tokens);
  ChunkwiseStep seco({8, 0, 0});  // 5 chunks
  seco.run(*m.model, {b});
  auto want = take_grads(*m.model);
  for (double p : {0.5, 0.3}) {
    std::vector<torch::Tensor> expectation;
    for (int mask = 0; mask < 32; ++mask) {  // every draw, weighted by its probability
      std::vector<bool> selected;
      double probability = 1;
      for (int i = 0; i < 5; ++i) selected.push_back(mask >> i & 1), probability *= selected.back() ? p : 1 - p;
      ChunkwiseStep spaco({8, 0, 0});
      spaco.run_selected(*m.model, b, selected, 1.0 / p, normaliser);
      auto g = take_grads(*m.model);
      for (size_t i = 0; i < g.size(); ++i) {
        if (expectation.size() <= i) expectation.push_back(torch::zeros_like(g[i]));
        expectation[i] += probability * g[i];
      }
    }
    EXPECT_LT(max_relative(expectation, want), 1e-10) << "p " << p;
  }
}

TEST(Spaco, DrawsDependOnlyOnTheSeedAndAverageTheBudget) {
  int64_t total = 0;
  for (uint64_t seed = 0; seed < 2000; ++seed) {
    auto s = spaco_selection(64, 8, seed);
    EXPECT_EQ(s, spaco_selection(64, 8, seed));
    for (bool b : s) total += b;
  }
  EXPECT_NEAR(double(total) / 2000, 8.0, 0.2);
  EXPECT_EQ(spaco_selection(5, 5, 1), std::vector<bool>(5, true));
  EXPECT_EQ(spaco_selection(5, 0, 1), std::vector<bool>(5, true));
  EXPECT_EQ(spaco_scale(64, 8, 0), 8.0);
  EXPECT_EQ(spaco_scale(64, 8, 2), 2.0);
  EXPECT_EQ(spaco_scale(8, 8, 0), 1.0);
}

TEST(Seco, StageOneKeysAndValuesEqualTheReforwardBitwise) {
  torch::manual_seed(6);
  Llama model(tiny_config());  // fp32, as trained
  Batch b = random_batch(2, 48, 2);
  auto part = [&](int64_t s, int64_t n) { return columns(b, s, n); };
  ChunkForward first;
  torch::NoGradGuard ng;
  model.chunk_loss_sum(part(0, 16), first, false);
  auto second = [&] {  // the next chunk after the first one's keys/values
    ChunkForward f;
    f.past = first.fresh;
    f.past_segments = b.segments.narrow(1, 0, 16);
    return f;
  };
  ChunkForward stage1 = second(), stage2 = second();
  model.chunk_loss_sum(part(16, 16), stage1, false);
  {
    torch::AutoGradMode with_grad(true);
    ASSERT_TRUE(model.chunk_loss_sum(part(16, 16), stage2, true).requires_grad());
  }
  for (size_t j = 0; j < stage1.fresh.size(); ++j) {
    EXPECT_TRUE(torch::equal(stage1.fresh[j].k, stage2.fresh[j].k)) << "layer " << j;
    EXPECT_TRUE(torch::equal(stage1.fresh[j].v, stage2.fresh[j].v)) << "layer " << j;
  }
}

// The buffered keys (models/chunk_kv.h: the chunk's own written into a buffer of the whole sequence, a view
// read, the past's gradient added in place) against the joined ones (the past copied in front): the second
// chunk's loss, the parameters' gradients and the earlier keys'/values' gradients, with a gradient also
// arriving at the chunk's own keys/values (as SeCO's later chunks send it). fp64, packed documents, GQA.
TEST(Seco, BufferedKeysEqualJoinedKeysWithTheirGradients) {
  Fp64Model m;
  Batch b = random_batch(2, 40, 2);
  auto part = [&](int64_t s, int64_t n) { return columns(b, s, n); };
  const int64_t s = 16, len = 13;  // a ragged chunk: the buffers hold 40 tokens, the chunk ends at 29
  std::vector<LayerKV> buffers, past_grads;
  ChunkForward first;
  {
    torch::NoGradGuard ng;
    first.buffers = &buffers, first.total = 40;
    m.model->chunk_loss_sum(part(0, s), first, false);
  }
  ASSERT_EQ(buffers.size(), 2u);
  std::vector<LayerKV> seeds;  // the gradient later chunks would send to this chunk's keys/values
  for (auto& kv : first.fresh)
    seeds.push_back({torch::randn({2, 2, len, 4}, torch::kFloat64), torch::randn({2, 2, len, 4}, torch::kFloat64)});
  auto backward = [&](ChunkForward& f) {
    auto loss = m.model->chunk_loss_sum(part(s, len), f, true);
    std::vector<torch::Tensor> roots{loss}, grads{torch::ones_like(loss)};
    for (size_t j = 0; j < f.fresh.size(); ++j)
      roots.push_back(f.fresh[j].k), grads.push_back(seeds[j].k), roots.push_back(f.fresh[j].v),
          grads.push_back(seeds[j].v);
    torch::autograd::backward(roots, grads);
    return loss.item<double>();
  };
  ChunkForward joined;  // the reference: leaves holding the first chunk's keys/values
  for (auto& kv : first.fresh)
    joined.past.push_back({kv.k.clone().requires_grad_(true), kv.v.clone().requires_grad_(true)});
  joined.past_segments = b.segments.narrow(1, 0, s);
  const double joined_loss = backward(joined);
  auto joined_params = take_grads(*m.model);
  ChunkForward buffered;
  buffered.buffers = &buffers, buffered.past_grads = &past_grads, buffered.start = s, buffered.total = 40;
  buffered.past_segments = b.segments.narrow(1, 0, s);
  const double buffered_loss = backward(buffered);
  auto buffered_params = take_grads(*m.model);
  EXPECT_NEAR(buffered_loss, joined_loss, 1e-13 * std::abs(joined_loss));
  EXPECT_LT(max_relative(buffered_params, joined_params), 1e-12);
  ASSERT_EQ(past_grads.size(), 2u);
  for (size_t j = 0; j < 2; ++j) {
    SCOPED_TRACE("layer " + std::to_string(j));
    EXPECT_LT(max_relative({past_grads[j].k.narrow(2, 0, s)}, {joined.past[j].k.grad()}), 1e-12);
    EXPECT_LT(max_relative({past_grads[j].v.narrow(2, 0, s)}, {joined.past[j].v.grad()}), 1e-12);
    EXPECT_EQ(past_grads[j].k.narrow(2, s, 40 - s).abs().max().item<double>(), 0.0);  // nothing past the past
    EXPECT_TRUE(torch::equal(buffers[j].k.narrow(2, 0, s), first.fresh[j].k));       // the past left as it was
    EXPECT_TRUE(torch::equal(buffers[j].v.narrow(2, s, len), buffered.fresh[j].v.detach()));
  }
}

TEST(Training, SecoTrainsLikeTheStandardStepAndSpacoResumesBitwise) {
  auto out = scratch_dir("train-seco");
  std::ostringstream log;
  TrainOptions o;
  o.out = &log;
  TrainResult standard = train(tiny_recipe(out, "standard", 6), o);
  Recipe r = tiny_recipe(out, "seco", 6);
  r.set("chunkwise.mode", "seco");
  r.set("chunkwise.chunk", "8");  // 4 chunks of the 32-token rows
  TrainResult seco = train(r, o);
  ASSERT_EQ(seco.losses.size(), standard.losses.size());
  for (size_t i = 0; i < seco.losses.size(); ++i)
    EXPECT_NEAR(seco.losses[i], standard.losses[i], 1e-4 * standard.losses[i]) << "step " << i + 1;
  EXPECT_NEAR(seco.val_loss, standard.val_loss, 1e-4 * standard.val_loss);

  auto spaco = [&](const std::string& name) {
    Recipe s = tiny_recipe(out, name, 8);
    s.set("chunkwise.mode", "spaco");
    s.set("chunkwise.chunk", "8");
    s.set("chunkwise.budget", "2");
    return s;
  };
  TrainResult full = train(spaco("spaco-full"), o);
  EXPECT_LT(full.losses.back(), full.losses.front());
  Recipe crashy = spaco("spaco-crashy");
  o.stop_at = 5;  // checkpoint at 3: steps 4 and 5 are lost and drawn again
  train(crashy, o);
  o.stop_at = 0, o.resume = true;
  TrainResult resumed = train(crashy, o);
  ASSERT_EQ(resumed.losses.size(), 5u);
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(resumed.losses[i], full.losses[i + 3]) << "step " << i + 4;
  EXPECT_EQ(resumed.val_loss, full.val_loss);

  // SpaCO's draws differ from SeCO's full passes: the runs part after the first step.
  EXPECT_NE(full.losses[3], train(tiny_recipe(out, "standard-8", 8), TrainOptions{false, 0, &log}).losses[3]);
}

TEST(Training, ChunkwiseSettingsOutOfRangeAreRefused) {
  auto out = scratch_dir("train-seco-bad");
  Recipe r = tiny_recipe(out, "bad", 2);
  r.set("chunkwise.mode", "spaco");
  r.set("chunkwise.max_compensation", "0.5");
  std::ostringstream log;
  std::string msg = user_error_of([&] { train(r, TrainOptions{false, 0, &log}); });
  EXPECT_NE(msg.find("max_compensation"), std::string::npos) << msg;
  EXPECT_NE(user_error_of([&] { r.set("chunkwise.chunk", "0"); }).find("chunkwise.chunk"), std::string::npos);
  EXPECT_NE(user_error_of([&] { r.set("chunkwise.mode", "sparse"); }).find("chunkwise.mode"), std::string::npos);
}
