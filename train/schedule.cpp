// Implementation of train/schedule.h.
#include "train/schedule.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "train/recipe.h"

namespace cw {

double WarmupCosine::lr(int64_t t) const {
  if (t < warmup) return peak * double(t) / double(warmup);
  if (t >= total) return min_lr;
  double progress = double(t - warmup) / double(std::max<int64_t>(1, total - warmup));
  return min_lr + 0.5 * (peak - min_lr) * (1.0 + std::cos(M_PI * progress));
}

double WarmupConstant::lr(int64_t t) const { return t < warmup ? peak * double(t) / double(warmup) : peak; }

std::unique_ptr<LrSchedule> make_schedule(const Recipe& r) {
  const double peak = r.f("optim.lr"), min_lr = r.f("optim.min_lr");
  const int64_t warmup = r.i("schedule.warmup_steps"), total = r.i("train.steps");
  check(peak > 0, "[optim] lr must be positive");
  check(min_lr >= 0 && min_lr <= peak, "[optim] min_lr must be between 0 and lr");
  check(warmup >= 0 && warmup <= total, "[schedule] warmup_steps must be between 0 and train.steps");
  const std::string& name = r.s("schedule.name");
  if (name == "constant") return std::make_unique<WarmupConstant>(peak, warmup);
  return std::make_unique<WarmupCosine>(peak, min_lr, warmup, total);
}

}  // namespace cw
