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
std::string human_bytes(uint64_t n);

}  // namespace cw
