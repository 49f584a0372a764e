// Learning-rate schedules: exact values at every phase boundary, min_lr at the last step, monotone
// phases, and recipe validation.
#include <gtest/gtest.h>

#include "common/error.h"
#include "train/recipe.h"
#include "train/schedule.h"

using namespace cw;

static LrSchedule make(const std::string& name) {
  ScheduleParams p;
  p.name = name, p.peak = 1e-3, p.min_lr = 1e-5, p.constant_lr = 2e-4;
  p.total = 1000, p.warmup = 100, p.decay = 200, p.cooldown = 300, p.anneal = 100;
  return LrSchedule(p);
}

TEST(Schedule, WarmupIsLinearInEverySchedule) {
  for (auto name : {"constant", "warmup_cosine", "wsd", "infinite", "inverse_sqrt"}) {
    LrSchedule s = make(name);
    EXPECT_DOUBLE_EQ(s.lr(1), 1e-5) << name;
    EXPECT_DOUBLE_EQ(s.lr(50), 5e-4) << name;
    EXPECT_DOUBLE_EQ(s.lr(100), 1e-3) << name;  // peak exactly at the end of warmup
  }
}

TEST(Schedule, WarmupCosineBoundaries) {
  LrSchedule s = make("warmup_cosine");
  EXPECT_DOUBLE_EQ(s.lr(550), 0.5 * (1e-3 + 1e-5));  // halfway through the decay
  EXPECT_DOUBLE_EQ(s.lr(1000), 1e-5);                // min_lr at the last step
  for (int t = 101; t <= 1000; ++t) EXPECT_LE(s.lr(t), s.lr(t - 1));
}

TEST(Schedule, WarmupStableDecay) {
  LrSchedule s = make("wsd");
  EXPECT_DOUBLE_EQ(s.lr(800), 1e-3);  // stable until T - D
  EXPECT_DOUBLE_EQ(s.lr(900), 1e-3 + (1e-5 - 1e-3) * 0.5);
  EXPECT_DOUBLE_EQ(s.lr(1000), 1e-5);
  ScheduleParams p = make("wsd").params();
  p.decay_shape = "cosine";
  EXPECT_DOUBLE_EQ(LrSchedule(p).lr(900), 0.5 * (1e-3 + 1e-5));
  EXPECT_DOUBLE_EQ(LrSchedule(p).lr(1000), 1e-5);
  p.decay_shape = "sqrt";
  EXPECT_DOUBLE_EQ(LrSchedule(p).lr(1000), 1e-5);
}

TEST(Schedule, InfiniteCooldownConstantAnneal) {
  LrSchedule s = make("infinite");
  EXPECT_DOUBLE_EQ(s.lr(250), 0.5 * (1e-3 + 2e-4));  // halfway through the cosine cooldown
  EXPECT_DOUBLE_EQ(s.lr(400), 2e-4);                 // constant from W + C ...
  EXPECT_DOUBLE_EQ(s.lr(900), 2e-4);                 // ... to T - A
  EXPECT_NEAR(s.lr(950), 2e-4 * std::sqrt(1e-5 / 2e-4), 1e-15);  // exponential anneal
  EXPECT_DOUBLE_EQ(s.lr(1000), 1e-5);
  for (int t = 101; t <= 1000; ++t) EXPECT_LE(s.lr(t), s.lr(t - 1) * (1 + 1e-12));
}

TEST(Schedule, InverseSqrtAndConstant) {
  LrSchedule s = make("inverse_sqrt");
  EXPECT_DOUBLE_EQ(s.lr(400), 1e-3 * 0.5);
  EXPECT_DOUBLE_EQ(make("constant").lr(1000), 1e-3);
}

TEST(Schedule, RecipeValidation) {
  Recipe r = Recipe::from_text("[schedule]\nname = wsd\nwarmup_steps = 10\ndecay_steps = 50\n[train]\nsteps = 100\n", "t");
  EXPECT_DOUBLE_EQ(make_schedule(r)->lr(50), r.f("optim.lr"));
  r.set("schedule.decay_steps", "95");
  EXPECT_THROW(make_schedule(r), UserError);
  Recipe inf = Recipe::from_text("[schedule]\nname = infinite\nwarmup_steps = 10\ncooldown_steps = 80\nanneal_steps = 20\n"
                                 "[train]\nsteps = 100\n", "t");
  EXPECT_THROW(make_schedule(inf), UserError);  // 10 + 80 + 20 > 100
  Recipe small = Recipe::from_text("[train]\nsteps = 3\n[schedule]\nwarmup_steps = 1\n[optim]\nlr = 0.001\n", "t");
  std::string table = schedule_table(*make_schedule(small), 3);
  EXPECT_EQ(table.substr(0, 8), "1 0.001\n");
}
