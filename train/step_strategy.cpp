// Implementation of train/step_strategy.h.
#include "train/step_strategy.h"

#include <cmath>

#include "common/error.h"
#include "train/chunkwise_step.h"
#include "train/recipe.h"

namespace cw {

StepResult StandardStep::run(CausalLM& model, const std::vector<Batch>& micro, const StepContext& ctx) {
  StepResult r;
  for (auto& b : micro) r.target_tokens += b.n_target_tokens, r.tokens += b.tokens.numel();
  const int64_t normaliser = ctx.target_tokens > 0 ? ctx.target_tokens : r.target_tokens;
  check(normaliser > 0, "a training step has no target tokens");
  torch::Tensor loss_sum;  // summed on the device: one read-back per step, not one per micro-batch
  for (size_t i = 0; i < micro.size(); ++i) {
    auto sum = model.loss_sum(micro[i]);
    auto loss = ctx.normaliser.defined() ? sum / ctx.normaliser : sum / double(normaliser);
    if (i + 1 == micro.size() && ctx.before_last_backward) ctx.before_last_backward();
    loss.backward();
    loss_sum = loss_sum.defined() ? loss_sum + loss.detach().to(torch::kFloat64) : loss.detach().to(torch::kFloat64);
  }
  r.loss_value = loss_sum;
  r.loss = ctx.defer_readback ? NAN : loss_sum.item<double>();
  return r;
}

std::unique_ptr<StepStrategy> make_step_strategy(const Recipe& r) {
  const std::string mode = r.s("chunkwise.mode");
  if (mode == "off") return std::make_unique<StandardStep>();
  ChunkwiseOptions o;
  o.chunk = r.i("chunkwise.chunk");
  o.budget = mode == "spaco" ? r.i("chunkwise.budget") : 0;
  o.max_compensation = r.f("chunkwise.max_compensation");
  return std::make_unique<ChunkwiseStep>(o);
}

}  // namespace cw
