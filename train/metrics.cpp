// Implementation of train/metrics.h.
#include "train/metrics.h"

#include <cstdio>
#include <sstream>

#include "common/error.h"
#include "common/files.h"

namespace cw {

MetricsLog::MetricsLog(const std::filesystem::path& path, int64_t keep_up_to) {
  if (path.empty()) return;  // disabled (ranks other than 0)
  std::string kept;
  if (keep_up_to >= 0 && fs::exists(path)) {
    std::istringstream in(read_file(path));
    std::string line;
    while (std::getline(in, line)) {
      try {
        json j = json::parse(line);
        if (j.value("step", int64_t(0)) <= keep_up_to) kept += line + "\n";
      } catch (const json::exception&) {  // a line cut by a crash
      }
    }
  }
  write_file_atomic(path, kept);
  out_.open(path, std::ios::app);
  check(bool(out_), "cannot write ", path.string());
}

void MetricsLog::write(const json& record) {
  if (!out_.is_open()) return;
  out_ << record.dump() << '\n';
  out_.flush();
}

std::string format_duration(double s) {
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%dh%02dm", int(s / 3600), int(s / 60) % 60);
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%dm%02ds", int(s / 60), int(s) % 60);
  else std::snprintf(buf, sizeof buf, "%ds", int(s));
  return buf;
}

std::string format_count(double n) {
  char buf[32];
  if (n >= 1e9) std::snprintf(buf, sizeof buf, "%.2fG", n / 1e9);
  else if (n >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
  else if (n >= 1e3) std::snprintf(buf, sizeof buf, "%.1fK", n / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", n);
  return buf;
}

}  // namespace cw
