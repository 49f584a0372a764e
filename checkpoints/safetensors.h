// Reader and writer of the safetensors format: [u64 LE header size N][N bytes JSON header][data].
// Shared by checkpoints (training) and serve/ (inference), so it links no LibTorch.
// The reader treats every file as untrusted: every size, offset, dtype and shape is checked before use.
// Must not: read outside the file, trust header sizes, or leave a partial file under the final name.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace cw::st {

enum class DType { F64, F32, F16, BF16, I64, I32, U32, I16, I8, U8, BOOL };

const char* dtype_name(DType t);       // "F32", ...
size_t dtype_size(DType t);
bool dtype_from_name(const std::string& name, DType* out);

struct TensorRef {                       // a tensor to write: borrowed bytes
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
  size_t nbytes;
};

struct TensorInfo {                      // a tensor read back: bytes inside File::bytes
  DType dtype;
  std::vector<int64_t> shape;
  size_t begin = 0, end = 0;             // absolute offsets into File::bytes
  int64_t numel() const;
};

struct File {
  std::string bytes;                     // the whole file
  std::vector<std::pair<std::string, TensorInfo>> tensors;  // in data order
  std::map<std::string, std::string> metadata;
  const TensorInfo* find(const std::string& name) const;
  const TensorInfo& at(const std::string& name) const;  // UserError naming the tensor and file
  const char* data(const TensorInfo& t) const { return bytes.data() + t.begin; }
  std::string path;
};

// Serialises to bytes (header padded to 8 bytes, tensors in the given order).
std::string encode(const std::vector<std::pair<std::string, TensorRef>>& tensors,
                   const std::map<std::string, std::string>& metadata = {});
void write(const std::filesystem::path& path, const std::vector<std::pair<std::string, TensorRef>>& tensors,
           const std::map<std::string, std::string>& metadata = {});
// Parses and validates; WHAT names the source in error messages.
File decode(std::string bytes, const std::string& what);
File read(const std::filesystem::path& path);

}  // namespace cw::st
