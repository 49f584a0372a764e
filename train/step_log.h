// The trainer's record of its steps, one step late: each launched step leaves its loss and gradient norm on
// the device (queued in DeferredValues); once they are read back, the step is counted (tokens, skipped
// steps), written to metrics.jsonl, printed as a progress line (step, loss, lr, grad norm, tokens/s, MFU,
// ETA) and checked by the NaN guard, which stops the run after too many non-finite steps in a row.
// Must not: touch the model, the optimizer or the data (the trainer owns them).
#pragma once
#include <torch/torch.h>

#include <chrono>
#include <deque>
#include <optional>
#include <ostream>
#include <vector>

#include "train/deferred_values.h"
#include "train/metrics.h"

namespace cw {

struct StepLogSettings {
  int64_t first_step = 1, total_steps = 0, log_every = 10, max_bad_steps = 5;
  double flops_per_token = 0;
  double peak_flops = 0;  // of all accelerators together; 0: no MFU (the CPU)
};

class StepLog {
 public:
  // TOKENS_SEEN and SKIPPED: the counts a resumed run starts from.
  StepLog(const StepLogSettings& s, MetricsLog& metrics, std::ostream& out, int64_t tokens_seen, int64_t skipped);
  // A step whose values are still on the device (LOSS and GRAD_NORM: one-element tensors). STOP_VOTES
  // (optional, one element): the ranks that asked to stop at this step, summed over ranks.
  void launched(int64_t step, double lr, int64_t tokens, const torch::Tensor& loss, const torch::Tensor& grad_norm,
                const torch::Tensor& stop_votes = {});
  // Records every launched step but the newest KEEP (their values are waited for).
  void settle(size_t keep = 0);
  // Work between steps that is not training (an evaluation, a checkpoint) took SECONDS: left out of the next
  // tokens/s (the ETA keeps it: later evaluations will take as long).
  void exclude(double seconds);
  int64_t tokens_seen() const { return tokens_seen_; }
  int64_t skipped() const { return skipped_; }
  const std::vector<double>& losses() const { return losses_; }  // per recorded step, NaN when skipped
  // Whether a recorded step carried a stop vote. Every rank records the same summed votes in the same order,
  // so every rank sees this turn true at the same call.
  bool stop_voted() const { return stop_voted_; }

 private:
  struct Launched {
    int64_t step;
    double lr;
    int64_t tokens;
    // When the step's work was known to be done: at launch for a device that runs it synchronously (the CPU),
    // so that records made later in a burst (before an evaluation, a checkpoint, the end) do not compress its
    // time; unset for an accelerator, where the values' arrival marks it.
    std::optional<std::chrono::steady_clock::time_point> done_at;
  };
  void record(const Launched& l, double loss, double grad_norm);

  StepLogSettings s_;
  MetricsLog& metrics_;
  std::ostream& out_;
  std::deque<Launched> launched_;
  DeferredValues values_;  // [loss, grad norm] per launched step, in order
  int64_t tokens_seen_, skipped_, bad_in_row_ = 0, tokens_since_log_ = 0;
  bool stop_voted_ = false;
  std::vector<double> losses_;
  std::chrono::steady_clock::time_point start_, last_log_;
};

}  // namespace cw
