// Implementation of data/dd_sampler.h.
#include "data/dd_sampler.h"

#include <random>

#include "common/error.h"
#include "common/json.h"
#include "data/window_sampler.h"

namespace cw {

std::vector<double> curriculum_odds(const std::string& name, int kmin, int kmax) {
  std::vector<double> o;
  const int n = kmax - kmin + 1;
  for (int i = 0; i < n; ++i) {
    if (name == "uniform") o.push_back(1);
    else if (name == "grow_linear") o.push_back(n - i);
    else if (name == "grow_p2") o.push_back(std::ldexp(1.0, n - 1 - i));
    else if (name == "shrink_linear") o.push_back(i + 1);
    else if (name == "shrink_p2") o.push_back(std::ldexp(1.0, i));
    else fail("unknown curriculum '", name, "' (uniform, grow_linear, grow_p2, shrink_linear, shrink_p2)");
  }
  return o;
}

DDSampler::DDSampler(std::shared_ptr<const std::vector<uint32_t>> tokens, Decomposition d, DDSamplerOptions opt)
    : tokens_(std::move(tokens)), d_(std::move(d)), opt_(opt), odds_(curriculum_odds(opt.curriculum, d_.kmin, d_.kmax)) {
  check(opt_.tokens_per_step > 0 && opt_.tokens_per_step % (int64_t(1) << d_.kmax) == 0,
        "dataset decomposition: tokens per step (", opt_.tokens_per_step, ") must be a multiple of 2^kmax = ",
        int64_t(1) << d_.kmax, " so every bucket gets a whole batch");
  check(opt_.cycles > 0, "[data] dd_cycles must be positive");
  used_.assign(size_t(d_.kmax - d_.kmin + 1), 0);
  start_epoch();
  check(batches_per_epoch() > 0, "dataset decomposition: no bucket holds one batch per cycle (", opt_.cycles,
        " cycles of ", opt_.tokens_per_step, " tokens x ", opt_.world, " ranks); use more data or fewer cycles");
}

void DDSampler::start_epoch() {
  order_.clear();
  for (int k = d_.kmin; k <= d_.kmax; ++k) {
    std::vector<uint32_t> idx(d_.bucket(k).size());
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = uint32_t(i);
    std::mt19937_64 rng(opt_.seed * 0x9E3779B97F4A7C15ull + uint64_t(epoch_) * 1315423911ull + uint64_t(k));
    for (size_t i = idx.size(); i > 1; --i) std::swap(idx[i - 1], idx[size_t(rng() % i)]);
    order_.push_back(std::move(idx));
  }
}

int64_t DDSampler::quota(int k) const {
  const int64_t n = int64_t(d_.bucket(k).size()), per_cycle = n / opt_.cycles;
  return per_cycle / (batch_size_for(k) * opt_.world);
}

int64_t DDSampler::batches_per_epoch() const {
  int64_t total = 0;
  for (int k = d_.kmin; k <= d_.kmax; ++k) total += quota(k);
  return total * opt_.cycles;
}

Batch DDSampler::next() {
  const int n = d_.kmax - d_.kmin + 1;
  for (;;) {  // move to the next cycle (and epoch) when every bucket is drained
    double total = 0;
    for (int i = 0; i < n; ++i) total += double(quota(d_.kmin + i) - used_[size_t(i)]) * odds_[size_t(i)];
    if (total > 0) break;
    used_.assign(size_t(n), 0);
    step_in_cycle_ = 0;
    if (++cycle_ == opt_.cycles) {
      cycle_ = 0;
      ++epoch_;
      start_epoch();
    }
  }
  // Counter-based draw: the same bucket on every rank and after a restart.
  std::mt19937_64 rng(opt_.seed ^ (uint64_t(epoch_) << 40) ^ (uint64_t(cycle_) << 32) ^ uint64_t(step_in_cycle_));
  std::vector<double> w(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) w[size_t(i)] = double(quota(d_.kmin + i) - used_[size_t(i)]) * odds_[size_t(i)];
  const int i = std::discrete_distribution<int>(w.begin(), w.end())(rng);
  const int k = d_.kmin + i;
  const int64_t b = batch_size_for(k), T = int64_t(1) << k;
  // Rows of this batch: part `cycle_` of the bucket, batch `used_[i]`, this rank's slice.
  const int64_t per_cycle = int64_t(d_.bucket(k).size()) / opt_.cycles;
  const int64_t first = cycle_ * per_cycle + (used_[size_t(i)] * opt_.world + opt_.rank) * b;
  auto buf = torch::empty({b, T + 1}, torch::kInt64);
  auto* p = buf.data_ptr<int64_t>();
  last_pieces_.clear();
  for (int64_t r = 0; r < b; ++r) {
    uint32_t piece = order_[size_t(i)][size_t(first + r)];
    last_pieces_.push_back(piece);
    const uint32_t* src = tokens_->data() + d_.bucket(k)[piece];
    for (int64_t t = 0; t <= T; ++t) p[r * (T + 1) + t] = int64_t(src[t]);
  }
  ++used_[size_t(i)];
  ++step_in_cycle_;
  last_k_ = k;
  return batch_from_windows(buf);
}

std::string DDSampler::state() const {
  return json{{"kind", "dd"}, {"epoch", epoch_}, {"cycle", cycle_}, {"step_in_cycle", step_in_cycle_},
              {"used", used_}, {"tokens_per_step", opt_.tokens_per_step}, {"cycles", opt_.cycles},
              {"curriculum", opt_.curriculum}, {"seed", opt_.seed}, {"world", opt_.world}, {"kmin", d_.kmin},
              {"kmax", d_.kmax}}
      .dump();
}

void DDSampler::restore(const std::string& text) {
  json s = parse_json_checked(text, "sampler state");
  check(s.value("kind", "") == "dd", "the checkpoint's data position is not a dataset-decomposition sampler's");
  check(s["tokens_per_step"] == opt_.tokens_per_step && s["cycles"] == opt_.cycles && s["curriculum"] == opt_.curriculum &&
            s["seed"] == opt_.seed && s["world"] == opt_.world && s["kmin"] == d_.kmin && s["kmax"] == d_.kmax,
        "the checkpoint's decomposition sampler was built with other settings (tokens per step, cycles, curriculum, "
        "seed, ranks or buckets); keep the [data] settings of the run you resume");
  epoch_ = s["epoch"].get<int64_t>();
  cycle_ = s["cycle"].get<int64_t>();
  step_in_cycle_ = s["step_in_cycle"].get<int64_t>();
  used_ = s["used"].get<std::vector<int64_t>>();
  start_epoch();
}

}  // namespace cw
