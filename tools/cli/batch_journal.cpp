// The journal of a `chunkwise batch` job: see batch_journal.h.
#include "tools/cli/batch_journal.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "common/error.h"

namespace cw::cli {

namespace {

constexpr const char* kFormat = "chunkwise_batch_journal";

std::string start_over(const fs::path& path) {
  return "; remove " + path.string() + " to start the job over";
}

std::string result_line(int64_t index, const json& result) {
  return json{{"index", index}, {"result", result}}.dump() + "\n";
}

}  // namespace

json BatchJournal::job_key(const fs::path& in, const fs::path& bundle, const json& sampling_defaults) {
  uint64_t weight_bytes = 0;
  for (const DirEntry& e : list_dir(bundle))
    if (!e.is_dir && e.path.extension() == ".safetensors") weight_bytes += fs::file_size(e.path);
  return {{"input", {{"bytes", fs::file_size(in)}, {"crc32", crc32_file(in)}}},
          {"bundle",
           {{"config_crc32", crc32_file(bundle / "config.json")},
            {"tokenizer_crc32", crc32_file(bundle / "tokenizer.model")},
            {"weight_bytes", weight_bytes}}},
          {"sampling_defaults", sampling_defaults}};
}

std::map<int64_t, json> BatchJournal::read(const fs::path& path, const json& key, size_t n) {
  const std::string text = read_file(path);
  std::vector<std::string> lines;
  size_t at = 0;
  while (at < text.size()) {
    const size_t end = text.find('\n', at);
    if (end == std::string::npos) break;  // a torn last line: the process died while writing it
    lines.push_back(text.substr(at, end - at));
    at = end + 1;
  }
  check(!lines.empty(), path.string(), " has no header line: it is not a batch journal", start_over(path));
  json head;
  try {
    head = parse_json_checked(lines[0], path.string() + ":1", 16);
  } catch (const UserError&) {
    fail(path.string(), ":1 is not a batch journal's header", start_over(path));
  }
  check(head.is_object() && head.value(kFormat, 0) == 1 && head.contains("job"), path.string(),
        ":1 is not a batch journal's header", start_over(path));
  const std::pair<const char*, const char*> parts[] = {
      {"input", "input file"}, {"bundle", "bundle"}, {"sampling_defaults", "sampling options"}};
  for (const auto& [part, what] : parts) {
    const json then = head["job"].value(part, json());
    check(then == key[part], path.string(), " was written for another job: the ", what, " changed (", then.dump(),
          " then, ", key[part].dump(), " now); resume with the input, bundle and options of that run",
          start_over(path));
  }
  std::map<int64_t, json> done;
  for (size_t i = 1; i < lines.size(); ++i) {
    const std::string where = path.string() + ":" + std::to_string(i + 1);
    json l = parse_json_checked(lines[i], where, 16);
    check(l.is_object() && l.contains("index") && l["index"].is_number_integer() && l.contains("result") &&
              l["result"].is_object(),
          where, ": not a result line of a batch journal", start_over(path));
    const int64_t index = l["index"].get<int64_t>();
    check(index >= 0 && size_t(index) < n && !done.count(index), where, ": request index ", index,
          index >= 0 && size_t(index) < n ? " appears twice" : " is outside the input's requests", start_over(path));
    done[index] = std::move(l["result"]);
  }
  return done;
}

BatchJournal::~BatchJournal() {
  if (f_) std::fclose(f_);
}

void BatchJournal::open(const fs::path& path, const json& key, const std::map<int64_t, json>& kept) {
  std::string bytes = json{{kFormat, 1}, {"job", key}}.dump() + "\n";
  for (const auto& [index, result] : kept) bytes += result_line(index, result);
  write_file_atomic(path, bytes);
  path_ = path;
  f_ = std::fopen(path.c_str(), "ab");
  check(f_ != nullptr, "cannot append to ", path.string(), ": ", std::strerror(errno));
  last_sync_ = std::chrono::steady_clock::now();
}

void BatchJournal::append(int64_t index, const json& result) {
  const std::string line = result_line(index, result);
  check(std::fwrite(line.data(), 1, line.size(), f_) == line.size() && std::fflush(f_) == 0, "error while writing ",
        path_.string(), " (disk full?)");
  const auto now = std::chrono::steady_clock::now();
  if (now - last_sync_ > std::chrono::seconds(2)) ::fsync(::fileno(f_)), last_sync_ = now;
}

void BatchJournal::finish() {
  if (f_) std::fclose(f_), f_ = nullptr;
  fs::remove(path_);
}

}  // namespace cw::cli
