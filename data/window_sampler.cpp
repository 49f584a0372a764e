// Implementation of data/window_sampler.h.
#include "data/window_sampler.h"

#include <random>

#include "common/error.h"
#include "common/json.h"

namespace cw {

Batch Batch::to(const torch::Device& d) const {
  Batch b = *this;
  auto move = [&](const torch::Tensor& t) {
    // From pinned memory the copy queues behind the device's work instead of waiting for it to finish.
    if (d.is_cuda() && t.is_cpu()) return t.pin_memory().to(d, /*non_blocking=*/true);
    return t.to(d);
  };
  b.tokens = move(tokens);
  b.targets = move(targets);
  b.positions = move(positions);
  if (segments.defined()) b.segments = move(segments);
  return b;
}

WindowSampler::WindowSampler(std::shared_ptr<const std::vector<uint32_t>> tokens, WindowSamplerOptions opt)
    : tokens_(std::move(tokens)), opt_(opt) {
  check(opt_.seq_len > 0 && opt_.batch_size > 0, "seq_len and batch_size must be positive");
  check(opt_.world > 0 && opt_.rank >= 0 && opt_.rank < opt_.world, "bad rank/world");
  n_windows_ = tokens_->size() > 1 ? int64_t(tokens_->size() - 1) / opt_.seq_len : 0;
  check(n_windows_ >= opt_.batch_size * opt_.world, "the store holds ", tokens_->size(), " tokens: ", n_windows_,
        " windows of ", opt_.seq_len, "+1 tokens, fewer than one batch of ", opt_.batch_size * opt_.world,
        ". Use more data, a smaller data.seq_len or a smaller data.batch_size.");
  build_order();
}

void WindowSampler::build_order() {
  order_.resize(size_t(n_windows_));
  for (int64_t i = 0; i < n_windows_; ++i) order_[size_t(i)] = i;
  if (!opt_.shuffle) return;
  // Seeded by (seed, epoch) alone, so any epoch's order can be rebuilt after a restart.
  std::mt19937_64 rng(opt_.seed * 0x9E3779B97F4A7C15ull + uint64_t(epoch_) + 1);
  for (int64_t i = n_windows_ - 1; i > 0; --i) std::swap(order_[size_t(i)], order_[size_t(rng() % uint64_t(i + 1))]);
}

void WindowSampler::next_window(int64_t* dst) {
  if (cursor_ + opt_.world > n_windows_) {
    ++epoch_;
    cursor_ = 0;
    build_order();
  }
  const int64_t T = opt_.seq_len, w = order_[size_t(cursor_ + opt_.rank)];
  const uint32_t* src = tokens_->data() + w * T;
  for (int64_t t = 0; t <= T; ++t) dst[t] = int64_t(src[t]);
  cursor_ += opt_.world;
}

Batch batch_from_windows(const torch::Tensor& windows) {
  const int64_t B = windows.size(0), T = windows.size(1) - 1;
  Batch batch;
  batch.tokens = windows.narrow(1, 0, T).contiguous();
  batch.targets = windows.narrow(1, 1, T).contiguous();
  batch.positions = torch::arange(T, torch::kInt64).unsqueeze(0).expand({B, T}).contiguous();
  batch.n_target_tokens = B * T;
  return batch;
}

Batch WindowSampler::next() {
  const int64_t B = opt_.batch_size, T = opt_.seq_len;
  auto buf = torch::empty({B, T + 1}, torch::kInt64);
  for (int64_t b = 0; b < B; ++b) next_window(buf.data_ptr<int64_t>() + b * (T + 1));
  return batch_from_windows(buf);
}

std::string WindowSampler::state() const {
  return json{{"kind", "window"}, {"seed", opt_.seed}, {"epoch", epoch_}, {"cursor", cursor_},
              {"seq_len", opt_.seq_len}, {"batch_size", opt_.batch_size}, {"world", opt_.world},
              {"n_windows", n_windows_}}
      .dump();
}

void WindowSampler::restore(const std::string& text) {
  json s = parse_json_checked(text, "sampler state");
  check(s.value("kind", "") == "window", "sampler state is not a window sampler's");
  check(s["seq_len"] == opt_.seq_len && s["batch_size"] == opt_.batch_size && s["world"] == opt_.world &&
            s["n_windows"] == n_windows_ && s["seed"] == opt_.seed,
        "the checkpoint's data position was saved with seq_len ", s["seq_len"], ", batch_size ", s["batch_size"],
        ", world ", s["world"], ", seed ", s["seed"], " over ", s["n_windows"],
        " windows; this run has different settings or data, so it cannot continue the same batches");
  epoch_ = s["epoch"].get<int64_t>();
  cursor_ = s["cursor"].get<int64_t>();
  build_order();
}

}  // namespace cw
