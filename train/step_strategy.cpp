// Implementation of train/step_strategy.h.
#include "train/step_strategy.h"

#include "common/error.h"

namespace cw {

StepResult StandardStep::run(CausalLM& model, const std::vector<Batch>& micro) {
  StepResult r;
  for (auto& b : micro) r.target_tokens += b.n_target_tokens, r.tokens += b.tokens.numel();
  check(r.target_tokens > 0, "a training step has no target tokens");
  double loss_sum = 0;
  for (auto& b : micro) {
    auto loss = model.loss_sum(b) / double(r.target_tokens);
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
