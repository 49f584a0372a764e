// Implementation of data/replay_sampler.h.
#include "data/replay_sampler.h"

#include "common/error.h"
#include "common/json.h"

namespace cw {

static uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

ReplaySampler::ReplaySampler(std::unique_ptr<WindowSampler> fresh, std::unique_ptr<WindowSampler> replay,
                             double fraction, int64_t batch_size, uint64_t seed, int64_t rank)
    : fresh_(std::move(fresh)), replay_(std::move(replay)), fraction_(fraction), batch_size_(batch_size),
      rank_(rank), seed_(seed), last_(size_t(batch_size), false) {
  check(fraction >= 0 && fraction <= 1, "[data] replay_fraction must be in [0, 1], got ", fraction);
  check(fresh_->seq_len() == replay_->seq_len(), "replay and new data must use the same seq_len");
}

bool ReplaySampler::draw(int64_t row) const {
  uint64_t h = splitmix64(splitmix64(seed_ ^ 0x5245504C4159ull) ^ (uint64_t(rank_) << 48) ^ uint64_t(row));
  return double(h >> 11) * 0x1.0p-53 < fraction_;
}

Batch ReplaySampler::next() {
  const int64_t T = fresh_->seq_len();
  auto buf = torch::empty({batch_size_, T + 1}, torch::kInt64);
  for (int64_t b = 0; b < batch_size_; ++b) {
    bool old = draw(rows_++);
    last_[size_t(b)] = old;
    replayed_ += old;
    (old ? replay_ : fresh_)->next_window(buf.data_ptr<int64_t>() + b * (T + 1));
  }
  return batch_from_windows(buf);
}

std::string ReplaySampler::state() const {
  return json{{"kind", "replay"}, {"fraction", fraction_}, {"rows", rows_}, {"replayed", replayed_},
              {"fresh", json::parse(fresh_->state())}, {"replay", json::parse(replay_->state())}}
      .dump();
}

void ReplaySampler::restore(const std::string& text) {
  json s = parse_json_checked(text, "sampler state");
  check(s.value("kind", "") == "replay", "the checkpoint's data position has no replay stream, but the recipe "
        "sets [data] replay; keep the data settings of the run you resume");
  check(s["fraction"].get<double>() == fraction_, "the checkpoint was trained with replay_fraction ", s["fraction"],
        ", the recipe says ", fraction_);
  rows_ = s["rows"].get<int64_t>();
  replayed_ = s["replayed"].get<int64_t>();
  fresh_->restore(s["fresh"].dump());
  replay_->restore(s["replay"].dump());
}

}  // namespace cw
