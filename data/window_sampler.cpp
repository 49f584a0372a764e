// Implementation of data/window_sampler.h.
#include "data/window_sampler.h"

#include <random>

#include "common/error.h"
#include "common/json.h"

namespace cw {

Batch Batch::to(const torch::Device& d) const {
  Batch b = *this;
  b.tokens = tokens.to(d);
  b.targets = targets.to(d);
  b.positions = positions.to(d);
  if (segments.defined()) b.segments = segments.to(d);
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

Batch WindowSampler::next() {
  const int64_t B = opt_.batch_size, T = opt_.seq_len, global = B * opt_.world;
  if (cursor_ + global > n_windows_) {
    ++epoch_;
    cursor_ = 0;
    build_order();
  }
  auto buf = torch::empty({B, T + 1}, torch::kInt64);
  auto* p = buf.data_ptr<int64_t>();
  const uint32_t* src = tokens_->data();
  for (int64_t b = 0; b < B; ++b) {
    int64_t w = order_[size_t(cursor_ + opt_.rank * B + b)];
    for (int64_t t = 0; t <= T; ++t) p[b * (T + 1) + t] = int64_t(src[w * T + t]);
  }
  cursor_ += global;
  Batch batch;
  batch.tokens = buf.narrow(1, 0, T).contiguous();
  batch.targets = buf.narrow(1, 1, T).contiguous();
  batch.positions = torch::arange(T, torch::kInt64).unsqueeze(0).expand({B, T}).contiguous();
  batch.n_target_tokens = B * T;
  return batch;
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
