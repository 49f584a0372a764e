// A progress report on stderr for long commands: a bar redrawn in place on a terminal (at most 10 times a
// second), a whole line every 10 s when stderr goes to a file (logs stay short). Counts, rate and ETA.
// Must not: print to stdout (commands keep stdout for their results).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace cw::cli {

class ProgressLine {
 public:
  ProgressLine(std::string unit, int64_t total);  // UNIT: what is counted ("documents", "requests")
  // DONE of the total so far; EXTRA is appended ("35 new tok/s"). Draws only when its interval has passed,
  // unless FORCE.
  void update(int64_t done, const std::string& extra = "", bool force = false);
  void finish();  // ends the terminal's line
  double seconds() const;

 private:
  std::string unit_;
  int64_t total_;
  bool tty_;
  double next_ = 0;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace cw::cli
