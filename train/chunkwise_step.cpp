// Implementation of train/chunkwise_step.h.
#include "train/chunkwise_step.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace cw {

static uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::vector<bool> spaco_selection(int64_t k, int64_t budget, uint64_t seed) {
  std::vector<bool> selected(size_t(k), true);
  if (budget <= 0 || budget >= k) return selected;
  const double p = double(budget) / double(k);
  uint64_t state = seed;
  for (int64_t i = 0; i < k; ++i) selected[size_t(i)] = double(splitmix64(state) >> 11) * 0x1.0p-53 < p;
  return selected;
}

double spaco_scale(int64_t k, int64_t budget, double max_compensation) {
  if (budget <= 0 || budget >= k) return 1.0;
  const double factor = double(k) / double(budget);
  return max_compensation > 0 ? std::min(factor, max_compensation) : factor;
}

ChunkwiseStep::ChunkwiseStep(ChunkwiseOptions o) : opt_(o) {
  check(o.chunk >= 1, "[chunkwise] chunk = ", o.chunk, ": use a positive number of tokens");
  check(o.budget >= 0, "[chunkwise] budget = ", o.budget, ": use 0 (SeCO) or a positive number of chunks");
  check(o.max_compensation == 0 || o.max_compensation >= 1, "[chunkwise] max_compensation = ", o.max_compensation,
        ": use 0 (no cap) or a factor of at least 1");
}

// Chunk I's rows [start, start + len) of every per-token tensor of B.
static Batch chunk_of(const Batch& b, int64_t start, int64_t len) {
  Batch c;
  c.tokens = b.tokens.narrow(1, start, len);
  c.targets = b.targets.narrow(1, start, len);
  c.positions = b.positions.narrow(1, start, len);
  c.has_segments = b.has_segments;
  if (b.has_segments) c.segments = b.segments.narrow(1, start, len);
  return c;
}

// A forward of the chunk at START reading and writing the per-layer key/value buffers CACHE (GRADS: where the
// earlier chunks' keys/values collect their gradient, when back-propagating).
static ChunkForward forward_after(std::vector<LayerKV>& cache, std::vector<LayerKV>* grads, const Batch& b,
                                  int64_t start) {
  ChunkForward f;
  f.buffers = &cache, f.past_grads = grads;
  f.start = start, f.total = b.tokens.size(1);
  if (start > 0 && b.has_segments) f.past_segments = b.segments.narrow(1, 0, start);
  return f;
}

torch::Tensor ChunkwiseStep::run_sequence(CausalLM& model, const Batch& b, const std::vector<bool>& selected,
                                          double scale, const StepContext& ctx, double normaliser,
                                          bool arm_before_last) {
  const int64_t T = b.tokens.size(1), c = opt_.chunk, k = int64_t(selected.size());
  auto start_of = [&](int64_t i) { return i * c; };
  auto len_of = [&](int64_t i) { return std::min(c, T - i * c); };
  auto loss_total = torch::zeros({}, b.tokens.options().dtype(torch::kFloat64));
  auto normalise = [&](const torch::Tensor& sum) {
    return ctx.normaliser.defined() ? sum / ctx.normaliser : sum / normaliser;
  };

  // Stage 1: the chunks' keys/values in order, and the losses of the chunks stage 2 leaves out. The last
  // chunk runs here only for its loss, when stage 2 leaves it out.
  std::vector<LayerKV> cache;  // per layer [B, Hkv, T, hd], filled by the chunk forwards
  {
    torch::NoGradGuard no_grad;
    for (int64_t i = 0; i < k; ++i) {
      if (i == k - 1 && selected[size_t(i)]) break;  // its keys/values serve no later chunk
      ChunkForward f = forward_after(cache, nullptr, b, start_of(i));
      auto sum = model.chunk_loss_sum(chunk_of(b, start_of(i), len_of(i)), f, /*with_loss=*/!selected[size_t(i)]);
      if (!selected[size_t(i)]) loss_total += normalise(sum).to(torch::kFloat64);
    }
  }

  // Stage 2: the selected chunks from last to first, each with the gradient its keys/values collected from the
  // later chunks' passes (those passes added it into GRADS).
  std::vector<LayerKV> grads;  // per layer, like CACHE; allocated at the first chunk with earlier keys
  std::vector<int64_t> order;
  for (int64_t i = k - 1; i >= 0; --i)
    if (selected[size_t(i)]) order.push_back(i);
  if (order.empty() && arm_before_last && ctx.before_last_backward) ctx.before_last_backward();
  for (size_t n = 0; n < order.size(); ++n) {
    const int64_t i = order[n], s = start_of(i), len = len_of(i);
    ChunkForward f = forward_after(cache, &grads, b, s);
    auto sum = model.chunk_loss_sum(chunk_of(b, s, len), f, /*with_loss=*/true);
    auto loss = normalise(sum);
    loss_total += loss.detach().to(torch::kFloat64);
    std::vector<torch::Tensor> roots{scale == 1.0 ? loss : loss * scale}, seeds{torch::ones_like(loss)};
    for (size_t j = 0; j < f.fresh.size() && j < grads.size(); ++j) {
      const std::pair<const torch::Tensor*, const torch::Tensor*> kv[] = {{&grads[j].k, &f.fresh[j].k},
                                                                          {&grads[j].v, &f.fresh[j].v}};
      for (auto [grad, fresh] : kv) {
        if (n == 0 || !grad->defined()) continue;  // no later chunk was back-propagated
        roots.push_back(*fresh);
        seeds.push_back(grad->narrow(2, s, len) * scale);  // a copy, of the chunk's length only
      }
    }
    if (n + 1 == order.size() && arm_before_last && ctx.before_last_backward) ctx.before_last_backward();
    torch::autograd::backward(roots, seeds);
  }
  backpropagated_ += int64_t(order.size()), chunks_ += k;
  return loss_total;
}

torch::Tensor ChunkwiseStep::run_selected(CausalLM& model, const Batch& b, const std::vector<bool>& selected,
                                          double scale, double normaliser) {
  const int64_t k = (b.tokens.size(1) + opt_.chunk - 1) / opt_.chunk;
  check(int64_t(selected.size()) == k, "run_selected: ", selected.size(), " flags for ", k, " chunks");
  return run_sequence(model, b, selected, scale, StepContext{}, normaliser, false);
}

torch::Tensor chunked_loss_sum(CausalLM& model, const Batch& b, int64_t chunk) {
  torch::NoGradGuard no_grad;
  ChunkwiseStep step({chunk, 0, 0});
  const int64_t k = (b.tokens.size(1) + chunk - 1) / chunk;
  return step.run_selected(model, b, std::vector<bool>(size_t(k), false), 1.0, 1.0);  // no chunk back-propagated
}

StepResult ChunkwiseStep::run(CausalLM& model, const std::vector<Batch>& micro, const StepContext& ctx) {
  check(model.supports_chunkwise(), "[model] family '", model.config().family,
        "' does not support chunk-wise training (SeCO/SpaCO); set [chunkwise] mode = off");
  StepResult r;
  for (auto& b : micro) r.target_tokens += b.n_target_tokens, r.tokens += b.tokens.numel();
  const int64_t normaliser = ctx.target_tokens > 0 ? ctx.target_tokens : r.target_tokens;
  check(normaliser > 0, "a training step has no target tokens");
  backpropagated_ = chunks_ = 0;
  torch::Tensor loss_sum;
  for (size_t m = 0; m < micro.size(); ++m) {
    const Batch& b = micro[m];
    const int64_t k = (b.tokens.size(1) + opt_.chunk - 1) / opt_.chunk;
    uint64_t state = ctx.seed ^ (0xD1B54A32D192ED03ull * (m + 1));
    auto selected = spaco_selection(k, opt_.budget, splitmix64(state));
    auto loss = run_sequence(model, b, selected, spaco_scale(k, opt_.budget, opt_.max_compensation), ctx,
                             double(normaliser), m + 1 == micro.size());
    loss_sum = loss_sum.defined() ? loss_sum + loss : loss;
  }
  r.loss_value = loss_sum;
  r.loss = ctx.defer_readback ? NAN : loss_sum.item<double>();
  return r;
}

}  // namespace cw
