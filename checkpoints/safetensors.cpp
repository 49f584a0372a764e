// Implementation of checkpoints/safetensors.h. Validation order: size prefix, JSON, each entry's fields,
// byte ranges inside the data section, byte count equal to the shape's, no overlaps.
#include "checkpoints/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"

namespace cw::st {

namespace {
struct DTypeRow { DType t; const char* name; size_t size; };
constexpr DTypeRow kDTypes[] = {
    {DType::F64, "F64", 8}, {DType::F32, "F32", 4}, {DType::F16, "F16", 2},  {DType::BF16, "BF16", 2},
    {DType::I64, "I64", 8}, {DType::I32, "I32", 4}, {DType::U32, "U32", 4}, {DType::I16, "I16", 2},
    {DType::I8, "I8", 1},   {DType::U8, "U8", 1},   {DType::BOOL, "BOOL", 1}};
constexpr uint64_t kMaxHeader = 100ull << 20;
}  // namespace

const char* dtype_name(DType t) {
  for (auto& r : kDTypes) if (r.t == t) return r.name;
  return "?";
}
size_t dtype_size(DType t) {
  for (auto& r : kDTypes) if (r.t == t) return r.size;
  return 0;
}
bool dtype_from_name(const std::string& name, DType* out) {
  for (auto& r : kDTypes) if (name == r.name) { *out = r.t; return true; }
  return false;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

const TensorInfo* File::find(const std::string& name) const {
  for (auto& [n, t] : tensors) if (n == name) return &t;
  return nullptr;
}
const TensorInfo& File::at(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (!t) fail(path, ": tensor '", name, "' is missing");
  return *t;
}

std::string encode(const std::vector<std::pair<std::string, TensorRef>>& tensors,
                   const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  size_t offset = 0;
  for (auto& [name, t] : tensors) {
    size_t expect = dtype_size(t.dtype);
    for (auto d : t.shape) expect *= size_t(d);
    if (expect != t.nbytes) throw std::logic_error("safetensors encode: byte size mismatch for " + name);
    header[name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.nbytes}}};
    offset += t.nbytes;
  }
  std::string h = header.dump();
  while (h.size() % 8) h.push_back(' ');
  std::string out;
  out.reserve(8 + h.size() + offset);
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out.push_back(char((n >> (8 * i)) & 0xff));
  out += h;
  for (auto& [name, t] : tensors) out.append(static_cast<const char*>(t.data), t.nbytes);
  return out;
}

void write(const std::filesystem::path& path, const std::vector<std::pair<std::string, TensorRef>>& tensors,
           const std::map<std::string, std::string>& metadata) {
  write_file_atomic(path, encode(tensors, metadata));
}

File decode(std::string bytes, const std::string& what) {
  File f;
  f.path = what;
  check(bytes.size() >= 8, what, ": not a safetensors file (", bytes.size(), " bytes, truncated?)");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(uint8_t(bytes[i])) << (8 * i);
  check(n <= kMaxHeader, what, ": header size ", n, " is implausible (corrupt file?)");
  check(n <= bytes.size() - 8, what, ": header size ", n, " exceeds the file (", bytes.size(),
        " bytes): the file is truncated or corrupt");
  json header = parse_json_checked(bytes.substr(8, n), what + " header");
  check(header.is_object(), what, ": header is not a JSON object");
  const size_t data_begin = 8 + n, data_size = bytes.size() - data_begin;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& e = it.value();
    if (name == "__metadata__") {
      check(e.is_object(), what, ": __metadata__ is not an object");
      for (auto m = e.begin(); m != e.end(); ++m) {
        check(m.value().is_string(), what, ": __metadata__ value '", m.key(), "' is not a string");
        f.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    check(e.is_object() && e.contains("dtype") && e.contains("shape") && e.contains("data_offsets"), what,
          ": tensor '", name, "' lacks dtype, shape or data_offsets");
    TensorInfo t;
    check(e["dtype"].is_string() && dtype_from_name(e["dtype"].get<std::string>(), &t.dtype), what,
          ": tensor '", name, "' has unknown dtype ", e["dtype"].dump());
    check(e["shape"].is_array() && e["shape"].size() <= 8, what, ": tensor '", name, "' has a bad shape");
    uint64_t count = dtype_size(t.dtype);
    for (auto& d : e["shape"]) {
      check(d.is_number_unsigned(), what, ": tensor '", name, "' has a negative or non-integer dimension");
      uint64_t v = d.get<uint64_t>();
      check(v == 0 || count <= std::numeric_limits<uint64_t>::max() / v, what, ": tensor '", name,
            "' shape overflows");
      count *= v;
      t.shape.push_back(int64_t(v));
    }
    const json& off = e["data_offsets"];
    check(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(), what,
          ": tensor '", name, "' has malformed data_offsets");
    uint64_t b = off[0].get<uint64_t>(), en = off[1].get<uint64_t>();
    check(b <= en && en <= data_size, what, ": tensor '", name, "' data_offsets [", b, ", ", en,
          "] lie outside the data section (", data_size, " bytes): truncated or corrupt file");
    check(en - b == count, what, ": tensor '", name, "' holds ", en - b, " bytes but its dtype and shape need ",
          count);
    t.begin = data_begin + b;
    t.end = data_begin + en;
    f.tensors.emplace_back(name, t);
  }
  std::sort(f.tensors.begin(), f.tensors.end(), [](auto& a, auto& b) { return a.second.begin < b.second.begin; });
  for (size_t i = 1; i < f.tensors.size(); ++i)
    check(f.tensors[i].second.begin >= f.tensors[i - 1].second.end, what, ": tensors '", f.tensors[i - 1].first,
          "' and '", f.tensors[i].first, "' overlap");
  f.bytes = std::move(bytes);
  return f;
}

File read(const std::filesystem::path& path) { return decode(read_file(path), path.string()); }

}  // namespace cw::st
