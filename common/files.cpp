// Implementation of common/files.h.
#include "common/files.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "common/error.h"

namespace cw {

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  check(bool(in), "cannot open ", path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  check(!in.bad(), "error while reading ", path.string());
  return ss.str();
}

void fsync_path(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void write_file_atomic(const fs::path& path, const std::string& bytes) {
  fs::path tmp = path;
  tmp += ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    check(bool(out), "cannot write ", tmp.string(), " (is the folder writable?)");
    out.write(bytes.data(), std::streamsize(bytes.size()));
    out.flush();
    check(bool(out), "error while writing ", tmp.string(), " (disk full?)");
  }
  fsync_path(tmp);
  fs::rename(tmp, path);
  fsync_path(path.has_parent_path() ? path.parent_path() : fs::path("."));
}

uint32_t crc32_of(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const Bytef*>(data);
  while (n > 0) {
    uInt step = n > (1u << 30) ? (1u << 30) : uInt(n);
    crc = uint32_t(::crc32(crc, p, step));
    p += step;
    n -= step;
  }
  return crc;
}

uint32_t crc32_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  check(bool(in), "cannot open ", path.string());
  std::vector<char> buf(1 << 20);
  uint32_t crc = 0;
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    crc = crc32_of(buf.data(), size_t(in.gcount()), crc);
  }
  return crc;
}

fs::path expand_user(const std::string& path) {
  if (path.rfind("~/", 0) == 0 || path == "~") {
    const char* home = std::getenv("HOME");
    return fs::path(home ? home : "/") / path.substr(path.size() > 1 ? 2 : 1);
  }
  return fs::path(path);
}

std::vector<DirEntry> list_dir(const fs::path& dir) {
  std::vector<DirEntry> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    fs::path p = dir / name;
    struct stat st;
    if (::stat(p.c_str(), &st) != 0) continue;  // dangling link
    out.push_back({p, S_ISDIR(st.st_mode)});
  }
  ::closedir(d);
  std::sort(out.begin(), out.end(), [](const DirEntry& a, const DirEntry& b) { return a.path < b.path; });
  return out;
}

static void collect_files(const fs::path& dir, std::vector<fs::path>& out, int depth) {
  check(depth < 64, "folders nested deeper than 64 levels (a link cycle?) under ", dir.string());
  for (auto& e : list_dir(dir)) {
    if (e.is_dir) collect_files(e.path, out, depth + 1);
    else out.push_back(e.path);
  }
}

std::vector<fs::path> list_files_recursive(const fs::path& root) {
  std::vector<fs::path> out;
  collect_files(root, out, 0);
  std::sort(out.begin(), out.end());
  return out;
}

void remove_tree(const fs::path& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return;
  if (!S_ISDIR(st.st_mode)) {
    check(::unlink(path.c_str()) == 0, "cannot remove ", path.string());
    return;
  }
  auto rm = [](const char* p, const struct stat*, int flag, struct FTW*) -> int {
    return flag == FTW_DP ? ::rmdir(p) : ::unlink(p);
  };
  check(::nftw(path.c_str(), rm, 16, FTW_DEPTH | FTW_PHYS) == 0, "cannot remove ", path.string());
}

std::string human_bytes(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = double(n);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.1f %s" : "%.0f %s", v, units[u]);
  return buf;
}

}  // namespace cw
