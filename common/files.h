// File helpers shared by every part: whole-file reads, atomic writes (temp name, fsync, rename),
// directory creation, CRC-32 checksums, and "~" expansion.
// Must not: depend on LibTorch (serve/ links this).
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace cw {

namespace fs = std::filesystem;

std::string read_file(const fs::path& path);
// Writes to PATH.tmp-<pid>, fsyncs, renames over PATH, fsyncs the directory.
void write_file_atomic(const fs::path& path, const std::string& bytes);
void fsync_path(const fs::path& path);  // a file or a directory
uint32_t crc32_of(const void* data, size_t n, uint32_t crc = 0);
uint32_t crc32_file(const fs::path& path);
fs::path expand_user(const std::string& path);  // "~/x" -> $HOME/x

// Directory walking and removal with POSIX calls. Use these instead of std::filesystem's directory
// iterators and remove_all: the torch wheel exports its own older copies of those symbols, and a binary
// built with a newer g++ that binds to them crashes (seen with GCC 13 on the GPU machine).
struct DirEntry {
  fs::path path;
  bool is_dir;
};
std::vector<DirEntry> list_dir(const fs::path& dir);           // sorted by name; empty if DIR is absent
std::vector<fs::path> list_files_recursive(const fs::path& root);  // regular files, sorted, follows links
void remove_tree(const fs::path& path);                         // no error if PATH is absent
std::string human_bytes(uint64_t n);

}  // namespace cw
