// Implementation of models/generate.h.
#include "models/generate.h"

#include "common/error.h"

namespace cw {

int64_t sample_next(const torch::Tensor& logits, const GenerateOptions& opt, torch::Generator& gen) {
  if (opt.temperature <= 0) return logits.argmax().item<int64_t>();
  auto l = logits.to(torch::kFloat32) / opt.temperature;
  if (opt.top_k > 0 && opt.top_k < l.size(0)) {
    auto kth = std::get<0>(l.topk(opt.top_k)).min();
    l = l.masked_fill(l < kth, -INFINITY);
  }
  auto probs = torch::softmax(l, -1);
  if (opt.top_p < 1.0) {
    auto [sorted, idx] = probs.sort(-1, /*descending=*/true);
    auto before = sorted.cumsum(-1) - sorted;  // mass of strictly more likely tokens
    sorted = sorted.masked_fill(before > opt.top_p, 0.0);
    probs = torch::zeros_like(probs).scatter(0, idx, sorted);
  }
  return torch::multinomial(probs, 1, false, gen).item<int64_t>();
}

std::vector<int64_t> generate(CausalLM& model, const std::vector<int64_t>& prompt, const GenerateOptions& opt,
                              const std::function<void(int64_t)>& on_token) {
  check(!prompt.empty(), "the prompt is empty");
  torch::NoGradGuard ng;
  model.eval();
  auto device = model.parameters().front().device();
  auto gen = at::detail::createCPUGenerator(opt.seed);
  std::vector<int64_t> ids = prompt;
  if (auto state = opt.decode_state ? model.new_decode_state() : nullptr) {  // one token at a time, no window
    auto one = [&](int64_t id) {
      return model.decode_step(torch::tensor({id}, torch::kInt64).to(device), *state).index({0}).to(torch::kCPU);
    };
    torch::Tensor logits;
    for (int64_t id : prompt) logits = one(id);
    for (int64_t step = 0; step < opt.max_new_tokens; ++step) {
      int64_t next = sample_next(logits, opt, gen);
      ids.push_back(next);
      if (on_token) on_token(next);
      if (next == opt.stop_id) break;
      if (step + 1 < opt.max_new_tokens) logits = one(next);
    }
    return std::vector<int64_t>(ids.begin() + int64_t(prompt.size()), ids.end());
  }
  const int64_t window = model.config().max_seq_len;
  for (int64_t step = 0; step < opt.max_new_tokens; ++step) {
    int64_t start = std::max<int64_t>(0, int64_t(ids.size()) - window);
    auto ctx = torch::tensor(std::vector<int64_t>(ids.begin() + start, ids.end()), torch::kInt64).unsqueeze(0);
    auto pos = torch::arange(ctx.size(1), torch::kInt64).unsqueeze(0);
    auto logits = model.logits(ctx.to(device), pos.to(device), {}).index({0, -1}).to(torch::kCPU);
    int64_t next = sample_next(logits, opt, gen);
    ids.push_back(next);
    if (on_token) on_token(next);
    if (next == opt.stop_id) break;
  }
  return std::vector<int64_t>(ids.begin() + int64_t(prompt.size()), ids.end());
}

}  // namespace cw
