// Run metrics: one JSON object per line in <run>/metrics.jsonl (plots read it), and the human progress
// line. On resume, lines past the checkpoint's step are dropped so the file matches an uninterrupted run.
// Must not: buffer lines across steps (a crash loses at most the line being written).
#pragma once
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/json.h"

namespace cw {

class MetricsLog {
 public:
  // KEEP_UP_TO < 0: start a new file; otherwise keep existing lines whose "step" <= KEEP_UP_TO. An empty PATH
  // disables the log (writes do nothing).
  MetricsLog(const std::filesystem::path& path, int64_t keep_up_to);
  void write(const json& record);

 private:
  std::ofstream out_;
};

std::string format_duration(double seconds);  // "1h02m", "4m12s", "9s"
std::string format_count(double n);           // 12.3K, 4.5M

}  // namespace cw
