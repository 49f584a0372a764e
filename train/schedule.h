// Learning-rate schedules. Steps count from 1 (the first optimizer update is step 1); T = train.steps,
// W = warmup_steps, peak = optim.lr, min = optim.min_lr. Every schedule starts with lr = peak * t / W.
//   constant       peak after warmup
//   warmup_cosine  cosine from peak (t = W) to min (t = T)
//   wsd            warmup-stable-decay: peak until T - D, then decay (linear | cosine | sqrt) to min at T,
//                  D = decay_steps
//   infinite       cosine cooldown from peak (t = W) to constant_lr (t = W + C), constant_lr until T - A,
//                  then exponential anneal to min at T (C = cooldown_steps, A = anneal_steps)
//   inverse_sqrt   peak * sqrt(W / t) after warmup (never below min)
// Must not: keep state (the rate is a pure function of the step, so resumed runs follow the same curve).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

namespace cw {

class Recipe;

struct ScheduleParams {
  std::string name = "warmup_cosine";
  double peak = 1e-3, min_lr = 1e-4, constant_lr = 3e-4;
  int64_t total = 1000, warmup = 100, decay = 200, cooldown = 200, anneal = 100;
  std::string decay_shape = "linear";
};

class LrSchedule {
 public:
  explicit LrSchedule(ScheduleParams p);
  double lr(int64_t step) const;
  const ScheduleParams& params() const { return p_; }

 private:
  ScheduleParams p_;
};

std::unique_ptr<LrSchedule> make_schedule(const Recipe& r);  // validates, UserError naming the key
std::string schedule_table(const LrSchedule& s, int64_t total);  // "step lr" lines (--print-schedule)

}  // namespace cw
