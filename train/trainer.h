// The training loop, narrated: sampler -> step strategy -> NaN guard -> clip -> AdamW -> schedule ->
// log -> eval -> checkpoint. Resuming restores weights, optimizer moments, step, data position and RNG
// states, so a resumed CPU run reproduces the uninterrupted one bitwise.
// Must not: parse command lines or print anything but progress (the CLI owns the rest).
#pragma once
#include <filesystem>
#include <functional>
#include <iostream>
#include <vector>

#include "train/recipe.h"

namespace cw {

struct TrainOptions {
  bool resume = false;     // continue from the newest complete checkpoint of the run
  int64_t stop_at = 0;     // > 0: stop after this step without a final checkpoint (as a crash would)
  std::ostream* out = &std::cout;
  // Asked after every step: true = finish this step, write a checkpoint and return (the CLI answers it from
  // SIGTERM / SIGUSR1, as a cluster sends before pre-empting a job). Data parallel: any rank asking stops
  // every rank after the same step.
  std::function<bool()> stop_requested;
};

struct TrainResult {
  std::filesystem::path run_dir;
  int64_t first_step = 1, last_step = 0;
  std::vector<double> losses;  // per step of this session (NaN for skipped steps)
  double val_loss = NAN;       // last evaluation
  double unigram_entropy = NAN;
  int64_t skipped_steps = 0;
  bool stopped_on_request = false;  // stop_requested ended the run early (with a checkpoint of last_step)
};

TrainResult train(const Recipe& recipe, const TrainOptions& opt = {});

// Entropy (nats) of the token frequencies: the loss of the best model that ignores context.
double unigram_entropy(const std::vector<uint32_t>& tokens, int64_t vocab_size);

}  // namespace cw
