// Implementation of train/schedule.h.
#include "train/schedule.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "common/error.h"
#include "train/recipe.h"

namespace cw {

LrSchedule::LrSchedule(ScheduleParams p) : p_(std::move(p)) {}

static double cosine_between(double from, double to, double progress) {
  return to + 0.5 * (from - to) * (1.0 + std::cos(M_PI * progress));
}

double LrSchedule::lr(int64_t t) const {
  const ScheduleParams& p = p_;
  if (t < p.warmup) return p.peak * double(t) / double(p.warmup);
  if (p.name == "constant") return p.peak;
  if (p.name == "inverse_sqrt") return std::max(p.min_lr, p.peak * std::sqrt(double(std::max<int64_t>(p.warmup, 1)) / double(t)));
  if (p.name == "warmup_cosine") {
    if (t >= p.total) return p.min_lr;
    return cosine_between(p.peak, p.min_lr, double(t - p.warmup) / double(std::max<int64_t>(1, p.total - p.warmup)));
  }
  if (p.name == "wsd") {
    const int64_t start = p.total - p.decay;
    if (t <= start) return p.peak;
    if (t >= p.total) return p.min_lr;
    double x = double(t - start) / double(p.decay);
    if (p.decay_shape == "cosine") return cosine_between(p.peak, p.min_lr, x);
    if (p.decay_shape == "sqrt") return p.min_lr + (p.peak - p.min_lr) * (1.0 - std::sqrt(x));
    return p.peak + (p.min_lr - p.peak) * x;
  }
  // infinite
  const int64_t stable_from = p.warmup + p.cooldown, anneal_from = p.total - p.anneal;
  if (t < stable_from) return cosine_between(p.peak, p.constant_lr, double(t - p.warmup) / double(p.cooldown));
  if (t <= anneal_from) return p.constant_lr;
  if (t >= p.total) return p.min_lr;
  double x = double(t - anneal_from) / double(p.anneal);
  if (p.min_lr > 0) return p.constant_lr * std::pow(p.min_lr / p.constant_lr, x);
  return p.constant_lr * (1.0 - x);
}

std::unique_ptr<LrSchedule> make_schedule(const Recipe& r) {
  ScheduleParams p;
  p.name = r.s("schedule.name");
  p.peak = r.f("optim.lr");
  p.min_lr = r.f("optim.min_lr");
  p.constant_lr = r.f("schedule.constant_lr");
  p.total = r.i("train.steps");
  p.warmup = r.i("schedule.warmup_steps");
  p.decay = r.i("schedule.decay_steps");
  p.cooldown = r.i("schedule.cooldown_steps");
  p.anneal = r.i("schedule.anneal_steps");
  p.decay_shape = r.s("schedule.decay_shape");
  check(p.peak > 0, "[optim] lr must be positive");
  check(p.min_lr >= 0 && p.min_lr <= p.peak, "[optim] min_lr must be between 0 and lr");
  check(p.warmup >= 0 && p.warmup <= p.total, "[schedule] warmup_steps must be between 0 and train.steps");
  if (p.name == "wsd")
    check(p.decay > 0 && p.warmup + p.decay <= p.total, "[schedule] decay_steps must be positive and fit after "
          "warmup_steps within train.steps (", p.warmup, " + ", p.decay, " > ", p.total, ")");
  if (p.name == "infinite") {
    check(p.cooldown > 0 && p.anneal > 0, "[schedule] cooldown_steps and anneal_steps must be positive for 'infinite'");
    check(p.warmup + p.cooldown + p.anneal <= p.total, "[schedule] warmup_steps + cooldown_steps + anneal_steps (",
          p.warmup + p.cooldown + p.anneal, ") exceed train.steps (", p.total, ")");
    check(p.constant_lr > 0 && p.constant_lr <= p.peak && p.constant_lr >= p.min_lr,
          "[schedule] constant_lr must lie between optim.min_lr and optim.lr");
  }
  return std::make_unique<LrSchedule>(p);
}

std::string schedule_table(const LrSchedule& s, int64_t total) {
  std::ostringstream os;
  char buf[64];
  for (int64_t t = 1; t <= total; ++t) {
    std::snprintf(buf, sizeof buf, "%lld %.10g\n", (long long)t, s.lr(t));
    os << buf;
  }
  return os.str();
}

}  // namespace cw
