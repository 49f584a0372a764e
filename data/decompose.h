// Dataset decomposition (Pouransari et al. 2024): every document (already ending in EOS) is cut into pieces
// of 2^k + 1 tokens, kmin <= k <= kmax, and pieces of one length form bucket k. A piece gives inputs
// piece[:-1] and targets piece[1:], so no sequence crosses a document boundary. Stored in the token store
// as dd/k<K> (uint64 start offsets into `tokens`) with attributes kmin, kmax, mode and seed.
// Must not: copy tokens (buckets are offsets).
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace cw {

struct Decomposition {
  int kmin = 8, kmax = 13;
  std::string mode = "random";  // random | deterministic (k = kmax for the head of long documents)
  uint64_t seed = 1;
  std::vector<std::vector<uint64_t>> starts;  // starts[k - kmin]: piece start offsets
  int64_t dropped_tokens = 0;                 // document tails shorter than 2^kmin + 1
  const std::vector<uint64_t>& bucket(int k) const { return starts[size_t(k - kmin)]; }
  int64_t tokens_in(int k) const { return int64_t(bucket(k).size()) << k; }  // training targets in bucket k
};

Decomposition decompose_documents(const std::vector<uint64_t>& doc_offsets, int kmin, int kmax,
                                  const std::string& mode, uint64_t seed);
void write_decomposition(const std::filesystem::path& store, const Decomposition& d);
Decomposition read_decomposition(const std::filesystem::path& store);  // UserError if `data decompose` never ran

}  // namespace cw
