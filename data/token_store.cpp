// Implementation of data/token_store.h with the HDF5 C API.
#include "data/token_store.h"

#include <hdf5.h>
#include <unistd.h>

#include <cstring>

#include "common/error.h"
#include "common/files.h"

namespace cw {

namespace {

struct H5Quiet {  // HDF5 prints its error stack by default; we report our own messages instead
  H5Quiet() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }
};
const H5Quiet kQuiet;

struct Handle {  // closes any HDF5 id
  hid_t id;
  herr_t (*close)(hid_t);
  Handle(hid_t i, herr_t (*c)(hid_t)) : id(i), close(c) {}
  ~Handle() { if (id >= 0) close(id); }
  Handle(const Handle&) = delete;
  operator hid_t() const { return id; }
};

void write_attr_str(hid_t loc, const char* name, const std::string& v) {
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type, v.size() ? v.size() : 1);
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  check(attr >= 0 && H5Awrite(attr, type, v.c_str()) >= 0, "HDF5: cannot write attribute ", name);
}
void write_attr_i64(hid_t loc, const char* name, int64_t v) {
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate2(loc, name, H5T_NATIVE_INT64, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  check(attr >= 0 && H5Awrite(attr, H5T_NATIVE_INT64, &v) >= 0, "HDF5: cannot write attribute ", name);
}
std::string read_attr_str(hid_t loc, const char* name, const std::string& what) {
  check(H5Aexists(loc, name) > 0, what, ": attribute '", name, "' is missing (not a chunkwise token store?)");
  Handle attr(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose);
  Handle type(H5Aget_type(attr), H5Tclose);
  check(H5Tget_class(type) == H5T_STRING && H5Tis_variable_str(type) == 0, what, ": attribute '", name,
        "' is not a fixed-length string");
  size_t n = H5Tget_size(type);
  check(n < (1u << 20), what, ": attribute '", name, "' is implausibly large");
  std::string v(n, '\0');
  check(H5Aread(attr, type, v.data()) >= 0, what, ": cannot read attribute '", name, "'");
  v.resize(strnlen(v.c_str(), n));
  return v;
}
int64_t read_attr_i64(hid_t loc, const char* name, const std::string& what) {
  check(H5Aexists(loc, name) > 0, what, ": attribute '", name, "' is missing (not a chunkwise token store?)");
  Handle attr(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose);
  int64_t v = 0;
  check(H5Aread(attr, H5T_NATIVE_INT64, &v) >= 0, what, ": cannot read attribute '", name, "'");
  return v;
}

void write_1d(hid_t file, const char* name, hid_t mem_type, hid_t file_type, const void* data, hsize_t n,
              bool checksum = true) {
  hsize_t dims[1] = {n};
  Handle space(H5Screate_simple(1, dims, nullptr), H5Sclose);
  Handle plist(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  hsize_t chunk[1] = {std::max<hsize_t>(1, std::min<hsize_t>(n, 1 << 18))};
  H5Pset_chunk(plist, 1, chunk);
  if (checksum) H5Pset_fletcher32(plist);  // HDF5 cannot checksum variable-length strings
  Handle ds(H5Dcreate2(file, name, file_type, space, H5P_DEFAULT, plist, H5P_DEFAULT), H5Dclose);
  check(ds >= 0, "HDF5: cannot create dataset ", name);
  if (n) check(H5Dwrite(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0, "HDF5: cannot write ", name);
}

template <typename T>
std::vector<T> read_1d(hid_t file, const char* name, hid_t mem_type, const std::string& what) {
  check(H5Lexists(file, name, H5P_DEFAULT) > 0, what, ": dataset '", name, "' is missing");
  Handle ds(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose);
  check(ds >= 0, what, ": cannot open dataset '", name, "'");
  Handle space(H5Dget_space(ds), H5Sclose);
  check(H5Sget_simple_extent_ndims(space) == 1, what, ": dataset '", name, "' is not one-dimensional");
  hsize_t n = 0;
  H5Sget_simple_extent_dims(space, &n, nullptr);
  std::vector<T> out(n);
  if (n)
    check(H5Dread(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) >= 0, what, ": dataset '", name,
          "' cannot be read: its checksum fails or the file is truncated (re-run `chunkwise data prepare`)");
  return out;
}

struct OpenStore {
  Handle file;
  std::string what;
  explicit OpenStore(const fs::path& path)
      : file(-1, H5Fclose), what(path.string()) {
    check(fs::exists(path), "token store not found: ", what, " (make it with `chunkwise data prepare`)");
    htri_t is = H5Fis_hdf5(path.c_str());
    check(is > 0, what, ": not an HDF5 file (corrupt or truncated?)");
    file.id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    check(file.id >= 0, what, ": cannot open as HDF5 (corrupt or truncated?)");
    check(read_attr_str(file, "format", what) == "chunkwise-token-store", what, ": not a chunkwise token store");
    int64_t v = read_attr_i64(file, "format_version", what);
    check(v == kTokenStoreVersion, what, ": store format version ", v, " but this build reads version ",
          kTokenStoreVersion);
  }
  TokenizerIdentity identity() const {
    TokenizerIdentity id;
    id.hash = read_attr_str(file, "tokenizer_hash", what);
    id.vocab_size = read_attr_i64(file, "vocab_size", what);
    id.bos_id = read_attr_i64(file, "bos_id", what);
    id.eos_id = read_attr_i64(file, "eos_id", what);
    id.unk_id = read_attr_i64(file, "unk_id", what);
    id.pad_id = read_attr_i64(file, "pad_id", what);
    return id;
  }
};

}  // namespace

void write_token_store(const fs::path& path, const TokenStoreContents& c) {
  check(c.doc_offsets.size() == c.doc_source.size() + 1 && c.doc_offsets.front() == 0 &&
            c.doc_offsets.back() == c.tokens.size(),
        "internal: inconsistent token store contents for ", path.string());
  if (path.has_parent_path()) fs::create_directories(path.parent_path());
  fs::path tmp = path;
  tmp += ".tmp-" + std::to_string(::getpid());
  {
    Handle file(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
    check(file >= 0, "cannot create ", tmp.string());
    write_1d(file, "tokens", H5T_NATIVE_UINT32, H5T_STD_U32LE, c.tokens.data(), c.tokens.size());
    write_1d(file, "doc_offsets", H5T_NATIVE_UINT64, H5T_STD_U64LE, c.doc_offsets.data(), c.doc_offsets.size());
    Handle strtype(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(strtype, H5T_VARIABLE);
    H5Tset_cset(strtype, H5T_CSET_UTF8);
    std::vector<const char*> ptrs;
    for (auto& s : c.doc_source) ptrs.push_back(s.c_str());
    write_1d(file, "doc_source", strtype, strtype, ptrs.data(), ptrs.size(), false);
    write_attr_str(file, "format", "chunkwise-token-store");
    write_attr_i64(file, "format_version", kTokenStoreVersion);
    write_attr_str(file, "split", c.split);
    write_attr_str(file, "tokenizer_hash", c.tokenizer.hash);
    write_attr_i64(file, "vocab_size", c.tokenizer.vocab_size);
    write_attr_i64(file, "bos_id", c.tokenizer.bos_id);
    write_attr_i64(file, "eos_id", c.tokenizer.eos_id);
    write_attr_i64(file, "unk_id", c.tokenizer.unk_id);
    write_attr_i64(file, "pad_id", c.tokenizer.pad_id);
    write_attr_i64(file, "n_docs", c.n_docs());
    write_attr_i64(file, "n_tokens", int64_t(c.tokens.size()));
    check(H5Fflush(file, H5F_SCOPE_GLOBAL) >= 0, "cannot flush ", tmp.string(), " (disk full?)");
  }
  fsync_path(tmp);
  fs::rename(tmp, path);
}

TokenizerIdentity read_token_store_identity(const fs::path& path) { return OpenStore(path).identity(); }

TokenStoreContents read_token_store(const fs::path& path) {
  OpenStore s(path);
  TokenStoreContents c;
  c.tokenizer = s.identity();
  c.split = read_attr_str(s.file, "split", s.what);
  c.tokens = read_1d<uint32_t>(s.file, "tokens", H5T_NATIVE_UINT32, s.what);
  c.doc_offsets = read_1d<uint64_t>(s.file, "doc_offsets", H5T_NATIVE_UINT64, s.what);
  {
    Handle ds(H5Dopen2(s.file, "doc_source", H5P_DEFAULT), H5Dclose);
    check(ds >= 0, s.what, ": dataset 'doc_source' is missing");
    Handle space(H5Dget_space(ds), H5Sclose);
    hsize_t n = 0;
    H5Sget_simple_extent_dims(space, &n, nullptr);
    Handle strtype(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(strtype, H5T_VARIABLE);
    H5Tset_cset(strtype, H5T_CSET_UTF8);
    std::vector<char*> ptrs(n, nullptr);
    if (n) check(H5Dread(ds, strtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()) >= 0, s.what,
                 ": 'doc_source' cannot be read (checksum or truncation)");
    for (auto* p : ptrs) c.doc_source.emplace_back(p ? p : "");
    if (n) H5Dvlen_reclaim(strtype, space, H5P_DEFAULT, ptrs.data());
  }
  check(!c.doc_offsets.empty() && c.doc_offsets.front() == 0 && c.doc_offsets.back() == c.tokens.size() &&
            c.doc_source.size() + 1 == c.doc_offsets.size(),
        s.what, ": doc_offsets, doc_source and tokens disagree (corrupt store)");
  for (size_t i = 1; i < c.doc_offsets.size(); ++i)
    check(c.doc_offsets[i] >= c.doc_offsets[i - 1], s.what, ": doc_offsets decrease at ", i, " (corrupt store)");
  for (uint32_t t : c.tokens)
    check(int64_t(t) < c.tokenizer.vocab_size, s.what, ": token id ", t, " >= vocab size ",
          c.tokenizer.vocab_size, " (corrupt store)");
  int64_t n_tokens = read_attr_i64(s.file, "n_tokens", s.what);
  check(n_tokens == int64_t(c.tokens.size()), s.what, ": n_tokens attribute disagrees with the data");
  return c;
}

void write_store_group(const fs::path& store, const std::string& name, const StoreGroup& g) {
  { OpenStore check_format(store); }
  fs::path tmp = store;
  tmp += ".tmp-" + std::to_string(::getpid());
  fs::copy_file(store, tmp, fs::copy_options::overwrite_existing);
  {
    Handle file(H5Fopen(tmp.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), H5Fclose);
    check(file >= 0, "cannot open ", tmp.string(), " for writing");
    if (H5Lexists(file, name.c_str(), H5P_DEFAULT) > 0) H5Ldelete(file, name.c_str(), H5P_DEFAULT);
    Handle group(H5Gcreate2(file, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
    check(group >= 0, "cannot create group ", name, " in ", tmp.string());
    for (auto& [k, v] : g.u64) write_1d(group, k.c_str(), H5T_NATIVE_UINT64, H5T_STD_U64LE, v.data(), v.size());
    for (auto& [k, v] : g.ints) write_attr_i64(group, k.c_str(), v);
    for (auto& [k, v] : g.strings) write_attr_str(group, k.c_str(), v);
    check(H5Fflush(file, H5F_SCOPE_GLOBAL) >= 0, "cannot flush ", tmp.string(), " (disk full?)");
  }
  fsync_path(tmp);
  fs::rename(tmp, store);
}

std::optional<StoreGroup> read_store_group(const fs::path& store, const std::string& name) {
  OpenStore s(store);
  if (H5Lexists(s.file, name.c_str(), H5P_DEFAULT) <= 0) return std::nullopt;
  Handle group(H5Gopen2(s.file, name.c_str(), H5P_DEFAULT), H5Gclose);
  check(group >= 0, s.what, ": cannot open group ", name);
  StoreGroup g;
  const std::string what = s.what + ":" + name;
  H5G_info_t info;
  H5Gget_info(group, &info);
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    char buf[256];
    H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, buf, sizeof buf, H5P_DEFAULT);
    g.u64[buf] = read_1d<uint64_t>(group, buf, H5T_NATIVE_UINT64, what);
  }
  std::vector<std::string> attr_names;
  auto collect = [](hid_t, const char* n, const H5A_info_t*, void* out) -> herr_t {
    static_cast<std::vector<std::string>*>(out)->push_back(n);
    return 0;
  };
  H5Aiterate2(group, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect, &attr_names);
  for (auto& n : attr_names) {
    Handle attr(H5Aopen(group, n.c_str(), H5P_DEFAULT), H5Aclose);
    Handle type(H5Aget_type(attr), H5Tclose);
    if (H5Tget_class(type) == H5T_STRING) g.strings[n] = read_attr_str(group, n.c_str(), what);
    else g.ints[n] = read_attr_i64(group, n.c_str(), what);
  }
  return g;
}

void require_same_tokenizer(const fs::path& store, const TokenizerIdentity& store_id,
                            const TokenizerIdentity& tokenizer, const std::string& tokenizer_path) {
  check(store_id == tokenizer, "tokenizer mismatch: ", store.string(), " was made with tokenizer ",
        store_id.describe(), " but ", tokenizer_path, " is ", tokenizer.describe(),
        ". Use the tokenizer the store was prepared with, or re-run `chunkwise data prepare` with this one.");
}

}  // namespace cw
