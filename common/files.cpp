// Implementation of common/files.h.
#include "common/files.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

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
