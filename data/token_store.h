// HDF5 token stores: one file per split with `tokens` (uint32; every document followed by the
// tokenizer's EOS), `doc_offsets` (uint64, n_docs + 1), `doc_source` (strings) and the tokenizer's identity
// as attributes. Datasets are chunked with Fletcher-32 checksums so corruption is detected on read.
// Written under a temporary name and renamed; opened stores are validated before use.
// Must not: depend on LibTorch, or hand out tokens from a store whose checks failed.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace cw {

struct TokenStoreContents {
  std::vector<uint32_t> tokens;
  std::vector<uint64_t> doc_offsets{0};  // doc i = tokens[doc_offsets[i], doc_offsets[i+1])
  std::vector<std::string> doc_source;
  TokenizerIdentity tokenizer;
  std::string split;  // "train", "val", ...
  int64_t n_docs() const { return int64_t(doc_offsets.size()) - 1; }
};

constexpr int kTokenStoreVersion = 1;

void write_token_store(const std::filesystem::path& path, const TokenStoreContents& c);
// Reads and validates the whole store; UserError naming the file and the problem otherwise.
TokenStoreContents read_token_store(const std::filesystem::path& path);
// Reads only the tokenizer identity (cheap), validating the file's format.
TokenizerIdentity read_token_store_identity(const std::filesystem::path& path);

// Extra groups written into a store after preparation (dd/ by `data decompose`, icp/ by `data order`):
// uint64 datasets and attributes. Writing copies the store, adds the group (replacing one of the same
// name) and renames the copy over the original, so a crash never leaves a half-written store.
struct StoreGroup {
  std::map<std::string, std::vector<uint64_t>> u64;
  std::map<std::string, int64_t> ints;
  std::map<std::string, std::string> strings;
};
void write_store_group(const std::filesystem::path& store, const std::string& name, const StoreGroup& g);
// Empty optional when the store has no such group.
std::optional<StoreGroup> read_store_group(const std::filesystem::path& store, const std::string& name);

// Fails unless the store was made with TOKENIZER, saying which of the two to change.
void require_same_tokenizer(const std::filesystem::path& store, const TokenizerIdentity& store_id,
                            const TokenizerIdentity& tokenizer, const std::string& tokenizer_path);

}  // namespace cw
