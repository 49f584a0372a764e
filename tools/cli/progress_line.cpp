// Implementation of tools/cli/progress_line.h.
#include "tools/cli/progress_line.h"

#include <unistd.h>

#include <algorithm>
#include <iostream>

#include "train/metrics.h"

namespace cw::cli {

ProgressLine::ProgressLine(std::string unit, int64_t total)
    : unit_(std::move(unit)), total_(std::max<int64_t>(total, 1)), tty_(::isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()) {}

double ProgressLine::seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void ProgressLine::update(int64_t done, const std::string& extra, bool force) {
  const double s = seconds();
  if (!force && s < next_) return;
  next_ = s + (tty_ ? 0.1 : 10.0);
  const int bar = int(30 * std::clamp<int64_t>(done, 0, total_) / total_);
  std::cerr << (tty_ ? "\r[" : "[") << std::string(size_t(bar), '#') << std::string(size_t(30 - bar), '.') << "] "
            << done << "/" << total_ << " " << unit_;
  if (!extra.empty()) std::cerr << ", " << extra;
  if (done > 0 && done < total_) std::cerr << ", ETA " << format_duration(s / double(done) * double(total_ - done));
  std::cerr << (tty_ ? "   " : "\n") << std::flush;
}

void ProgressLine::finish() {
  if (tty_) std::cerr << "\n" << std::flush;
}

}  // namespace cw::cli
