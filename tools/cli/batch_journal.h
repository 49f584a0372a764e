// The journal of a `chunkwise batch` job (OUT.partial): a header line naming the job (the input file's size
// and CRC-32, the bundle's config, tokenizer and weight sizes, the sampling defaults), then one line per
// finished request, appended and flushed as each finishes, so that `--resume` after a crash runs only the
// requests that are not in it. Must not: write OUT itself (the command writes it whole, atomically, at the
// end), or hand back a torn last line as a result.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>

#include "common/files.h"
#include "common/json.h"

namespace cw::cli {

class BatchJournal {
 public:
  // What a journal belongs to; a resumed job must match it field by field.
  static json job_key(const fs::path& in, const fs::path& bundle, const json& sampling_defaults);

  // The finished results in PATH (request index -> result object). A last line without its newline (the
  // process died while writing it) is dropped. A header of another job, a malformed line, or an index outside
  // [0, n) or seen twice is an error that names PATH and says what to do.
  static std::map<int64_t, json> read(const fs::path& path, const json& key, size_t n);

  BatchJournal() = default;
  BatchJournal(const BatchJournal&) = delete;
  BatchJournal& operator=(const BatchJournal&) = delete;
  ~BatchJournal();

  // Writes PATH afresh (temp name, then rename) with KEY and the results kept from an earlier run, and keeps it
  // open for append().
  void open(const fs::path& path, const json& key, const std::map<int64_t, json>& kept);
  // One result line, flushed to the OS at once (it survives the process) and synced to disk at most every 2 s.
  void append(int64_t index, const json& result);
  // Closes and deletes the journal: called once OUT is complete.
  void finish();

 private:
  fs::path path_;
  std::FILE* f_ = nullptr;
  std::chrono::steady_clock::time_point last_sync_{};
};

}  // namespace cw::cli
