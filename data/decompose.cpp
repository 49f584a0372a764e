// Implementation of data/decompose.h.
#include "data/decompose.h"

#include <cmath>
#include <random>

#include "common/error.h"
#include "data/token_store.h"

namespace cw {

Decomposition decompose_documents(const std::vector<uint64_t>& doc_offsets, int kmin, int kmax,
                                  const std::string& mode, uint64_t seed) {
  check(kmin >= 1 && kmin <= kmax && kmax <= 24, "decomposition needs 1 <= kmin <= kmax <= 24, got ", kmin, "..", kmax);
  check(mode == "random" || mode == "deterministic", "decomposition mode must be random or deterministic");
  Decomposition d;
  d.kmin = kmin, d.kmax = kmax, d.mode = mode, d.seed = seed;
  d.starts.resize(size_t(kmax - kmin + 1));
  // P(k) proportional to 2^(kmax - k): every bucket receives the same token mass from long documents.
  std::vector<double> weights;
  for (int k = kmin; k <= kmax; ++k) weights.push_back(std::ldexp(1.0, kmax - k));
  std::discrete_distribution<int> draw(weights.begin(), weights.end());
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i + 1 < doc_offsets.size(); ++i) {
    uint64_t pos = doc_offsets[i], len = doc_offsets[i + 1] - doc_offsets[i];
    while (len > 1) {
      int k = 63 - __builtin_clzll(len - 1);  // floor(log2(len - 1))
      if (k < kmin) break;
      if (k > kmax) k = mode == "random" ? kmin + draw(rng) : kmax;
      d.starts[size_t(k - kmin)].push_back(pos);
      pos += (uint64_t(1) << k) + 1;
      len -= (uint64_t(1) << k) + 1;
    }
    d.dropped_tokens += int64_t(len);
  }
  return d;
}

void write_decomposition(const std::filesystem::path& store, const Decomposition& d) {
  StoreGroup g;
  for (int k = d.kmin; k <= d.kmax; ++k) g.u64["k" + std::to_string(k)] = d.bucket(k);
  g.ints = {{"kmin", d.kmin}, {"kmax", d.kmax}, {"seed", int64_t(d.seed)}, {"dropped_tokens", d.dropped_tokens}};
  g.strings = {{"mode", d.mode}};
  write_store_group(store, "dd", g);
}

Decomposition read_decomposition(const std::filesystem::path& store) {
  auto g = read_store_group(store, "dd");
  check(g.has_value(), store.string(), " has no decomposition: run `chunkwise data decompose ", store.string(), "`");
  Decomposition d;
  d.kmin = int(g->ints.at("kmin"));
  d.kmax = int(g->ints.at("kmax"));
  d.seed = uint64_t(g->ints.at("seed"));
  d.dropped_tokens = g->ints.at("dropped_tokens");
  d.mode = g->strings.at("mode");
  for (int k = d.kmin; k <= d.kmax; ++k) {
    auto it = g->u64.find("k" + std::to_string(k));
    check(it != g->u64.end(), store.string(), ": dd/k", k, " is missing (re-run `chunkwise data decompose`)");
    d.starts.push_back(it->second);
  }
  return d;
}

}  // namespace cw
