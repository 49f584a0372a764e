// Implementation of train/step_strategy.h.
#include "train/step_strategy.h"

#include "common/error.h"

namespace cw {

StepResult StandardStep::run(CausalLM& model, const std::vector<Batch>& micro, const StepContext& ctx) {
  StepResult r;
  for (auto& b : micro) r.target_tokens += b.n_target_tokens, r.tokens += b.tokens.numel();
  const int64_t normaliser = ctx.target_tokens > 0 ? ctx.target_tokens : r.target_tokens;
  check(normaliser > 0, "a training step has no target tokens");
  double loss_sum = 0;
  for (size_t i = 0; i < micro.size(); ++i) {
    auto loss = model.loss_sum(micro[i]) / double(normaliser);
    if (i + 1 == micro.size() && ctx.before_last_backward) ctx.before_last_backward();
    loss.backward();
    loss_sum += loss.item<double>();
  }
  r.loss = loss_sum;
  return r;
}

std::unique_ptr<StepStrategy> make_step_strategy(const std::string& name) {
  check(name == "standard", "unknown step strategy '", name, "'");
  return std::make_unique<StandardStep>();
}

}  // namespace cw
