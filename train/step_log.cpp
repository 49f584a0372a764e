// Implementation of train/step_log.h.
#include "train/step_log.h"

#include <cmath>
#include <cstdio>
#include <iomanip>
#include <sstream>

#include "common/error.h"

namespace cw {

StepLog::StepLog(const StepLogSettings& s, MetricsLog& metrics, std::ostream& out, int64_t tokens_seen,
                 int64_t skipped)
    : s_(s), metrics_(metrics), out_(out), tokens_seen_(tokens_seen), skipped_(skipped),
      start_(std::chrono::steady_clock::now()), last_log_(start_) {}

void StepLog::launched(int64_t step, double lr, int64_t tokens, const torch::Tensor& loss,
                       const torch::Tensor& grad_norm, const torch::Tensor& stop_votes) {
  std::vector<torch::Tensor> values = {loss.reshape({}).to(torch::kFloat64), grad_norm.reshape({}).to(torch::kFloat64)};
  if (stop_votes.defined()) values.push_back(stop_votes.reshape({}).to(loss.device(), torch::kFloat64));
  values_.push(torch::stack(values));
  std::optional<std::chrono::steady_clock::time_point> done_at;
  if (loss.device().is_cpu()) done_at = std::chrono::steady_clock::now();
  launched_.push_back({step, lr, tokens, done_at});
}

void StepLog::settle(size_t keep) {
  while (launched_.size() > keep) {
    const Launched l = launched_.front();
    launched_.pop_front();
    const std::vector<double> v = values_.pop();
    if (v.size() > 2 && v[2] > 0) stop_voted_ = true;
    record(l, v[0], v[1]);
  }
}

void StepLog::exclude(double seconds) {
  last_log_ += std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(seconds));
}

void StepLog::record(const Launched& l, double loss, double gnorm) {
  tokens_seen_ += l.tokens;
  tokens_since_log_ += l.tokens;
  if (!std::isfinite(loss) || !std::isfinite(gnorm)) {  // the optimizer skipped it on the device
    ++skipped_;
    ++bad_in_row_;
    losses_.push_back(NAN);
    metrics_.write({{"step", l.step}, {"skipped", true}, {"loss", nullptr}, {"grad_norm", nullptr}});
    out_ << "step " << l.step << ": non-finite loss or gradient, step skipped (" << bad_in_row_ << " in a row)\n";
    check(bad_in_row_ < s_.max_bad_steps, "stopped at step ", l.step, ": ", bad_in_row_,
          " non-finite steps in a row. The weights and checkpoints hold no NaN; lower [optim] lr, check the "
          "data, or resume from the last checkpoint with --resume.");
    return;
  }
  bad_in_row_ = 0;
  losses_.push_back(loss);
  const auto now = l.done_at ? *l.done_at : std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double since_log = std::chrono::duration<double>(now - last_log_).count();
  const double tok_s = double(tokens_since_log_) / std::max(since_log, 1e-9);
  // tok_s counts the global batch; MFU is per accelerator (peak_flops sums them).
  const double mfu = s_.peak_flops > 0 ? tok_s * s_.flops_per_token / s_.peak_flops : NAN;
  const int64_t done_here = l.step - s_.first_step + 1;
  const double eta = elapsed / double(done_here) * double(s_.total_steps - l.step);
  json rec = {{"step", l.step}, {"loss", loss}, {"lr", l.lr}, {"grad_norm", gnorm}, {"tokens", tokens_seen_},
              {"tok_s", tok_s}, {"elapsed_s", elapsed}};
  if (s_.peak_flops > 0) rec["mfu"] = mfu;
  metrics_.write(rec);
  if (l.step % s_.log_every == 0 || l.step == s_.total_steps || l.step == s_.first_step) {
    char mfu_text[16] = "-";
    if (s_.peak_flops > 0) std::snprintf(mfu_text, sizeof mfu_text, "%.1f%%", mfu * 100);
    std::ostringstream line;
    line << "step " << l.step << "/" << s_.total_steps << " | loss " << std::fixed << std::setprecision(4) << loss
         << " | lr " << std::scientific << std::setprecision(2) << l.lr << " | gnorm " << std::fixed
         << std::setprecision(3) << gnorm << " | " << format_count(tok_s) << " tok/s | MFU " << mfu_text
         << " | ETA " << format_duration(eta);
    out_ << line.str() << "\n" << std::flush;
    last_log_ = now;
    tokens_since_log_ = 0;
  }
}

}  // namespace cw
