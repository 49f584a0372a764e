// Implementation of data/icp_order.h.
#include "data/icp_order.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>
#include <unordered_set>

#include "common/error.h"

namespace cw {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  return x ^ (x >> 33);
}
}  // namespace

torch::Tensor hashed_tfidf(const TokenStoreContents& s, int64_t dim) {
  const int64_t n = s.n_docs(), V = s.tokenizer.vocab_size;
  std::vector<int64_t> df(static_cast<size_t>(V), 0), last(size_t(V), -1);
  for (int64_t d = 0; d < n; ++d)
    for (uint64_t t = s.doc_offsets[size_t(d)]; t < s.doc_offsets[size_t(d + 1)]; ++t)
      if (last[s.tokens[t]] != d) last[s.tokens[t]] = d, ++df[s.tokens[t]];
  std::vector<float> idf(static_cast<size_t>(V));
  for (int64_t v = 0; v < V; ++v) idf[size_t(v)] = df[size_t(v)] ? float(std::log(double(n) / double(df[size_t(v)]))) : 0.f;
  auto emb = torch::zeros({n, dim}, torch::kFloat32);
  float* e = emb.data_ptr<float>();
  for (int64_t d = 0; d < n; ++d) {
    for (uint64_t t = s.doc_offsets[size_t(d)]; t < s.doc_offsets[size_t(d + 1)]; ++t) {
      uint64_t h = mix(s.tokens[t] + 0x9E3779B97F4A7C15ull);
      e[d * dim + int64_t(h % uint64_t(dim))] += ((h >> 63) ? 1.f : -1.f) * idf[s.tokens[t]];
    }
  }
  return torch::nn::functional::normalize(emb, torch::nn::functional::NormalizeFuncOptions().dim(1));
}

KnnGraph knn_exact(const torch::Tensor& embeddings, int64_t k, int64_t block, const torch::Device& device,
                   const std::function<void(int64_t, int64_t)>& on_progress) {
  torch::NoGradGuard ng;
  const int64_t n = embeddings.size(0);
  check(n > k, "in-context ordering needs more documents (", n, ") than neighbours k = ", k);
  check(k >= 1 && block >= 1, "knn_exact: k = ", k, " and block = ", block, " must be at least 1");
  auto all = embeddings.to(device);
  auto index = torch::empty({n, k}, torch::kInt64), sim = torch::empty({n, k}, torch::kFloat32);
  for (int64_t i = 0; i < n; i += block) {
    const int64_t m = std::min(block, n - i);
    auto scores = torch::matmul(all.narrow(0, i, m), all.t());  // [m, n]
    auto self = torch::arange(i, i + m, torch::TensorOptions().dtype(torch::kInt64).device(device));
    scores.scatter_(1, self.unsqueeze(1), -INFINITY);  // a document is not its own neighbour
    auto [v, idx] = scores.topk(k, 1, /*largest=*/true, /*sorted=*/true);
    index.narrow(0, i, m).copy_(idx.to(torch::kCPU));
    sim.narrow(0, i, m).copy_(v.to(torch::kCPU));
    if (on_progress) on_progress(i + m, n);
  }
  return {index, sim};
}

KnnGraph knn_reference(const torch::Tensor& embeddings, int64_t k) {
  auto e = embeddings.to(torch::kFloat64);
  auto scores = torch::matmul(e, e.t());
  scores.fill_diagonal_(-INFINITY);
  auto [v, idx] = scores.topk(k, 1, true, true);
  return {idx, v.to(torch::kFloat32)};
}

std::vector<int64_t> greedy_walk(const KnnGraph& g, const std::function<bool(int64_t, int64_t)>& skip,
                                 int64_t* dropped) {
  const int64_t n = g.index.size(0), k = g.index.size(1);
  const int64_t* nb = g.index.data_ptr<int64_t>();
  std::vector<int64_t> degree(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < n * k; ++i) ++degree[size_t(nb[i])];
  std::vector<int64_t> by_degree(static_cast<size_t>(n));
  std::iota(by_degree.begin(), by_degree.end(), 0);
  std::stable_sort(by_degree.begin(), by_degree.end(), [&](int64_t a, int64_t b) { return degree[size_t(a)] < degree[size_t(b)]; });
  std::vector<bool> visited(static_cast<size_t>(n), false);
  std::vector<int64_t> out;
  out.reserve(size_t(n));
  int64_t drops = 0;
  size_t restart = 0;
  auto visit = [&](int64_t d) {
    visited[size_t(d)] = true;
    if (!out.empty() && skip && skip(out.back(), d)) ++drops;
    else out.push_back(d);
  };
  while (true) {
    while (restart < by_degree.size() && visited[size_t(by_degree[restart])]) ++restart;
    if (restart == by_degree.size()) break;
    int64_t d = by_degree[restart];  // the least-connected unvisited document
    visit(d);
    for (;;) {
      int64_t next = -1;
      for (int64_t j = 0; j < k && next < 0; ++j)
        if (!visited[size_t(nb[d * k + j])]) next = nb[d * k + j];  // most similar unvisited neighbour
      if (next < 0) break;
      visit(next);
      d = next;
    }
  }
  if (dropped) *dropped = drops;
  return out;
}

double mean_adjacent_similarity(const torch::Tensor& e, const std::vector<uint64_t>& order) {
  if (order.size() < 2) return 0;
  auto idx = torch::tensor(std::vector<int64_t>(order.begin(), order.end()), torch::kInt64);
  auto a = e.index_select(0, idx.narrow(0, 0, idx.size(0) - 1)), b = e.index_select(0, idx.narrow(0, 1, idx.size(0) - 1));
  return (a * b).sum(1).mean().item<double>();
}

IcpResult icp_order(const TokenStoreContents& s, const IcpOptions& opt) {
  check(opt.k >= 1 && opt.dim >= 1 && opt.block >= 1, "in-context ordering needs at least one neighbour (--k), ",
        "feature dimension (--dim) and query row per product (--block); got k = ", opt.k, ", dim = ", opt.dim,
        ", block = ", opt.block);
  IcpResult r;
  auto t0 = std::chrono::steady_clock::now();
  torch::Tensor emb = hashed_tfidf(s, opt.dim);
  r.embed_s = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  KnnGraph g = knn_exact(emb, std::min<int64_t>(opt.k, s.n_docs() - 1), opt.block, opt.device, opt.on_progress);
  r.knn_s = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  auto trigrams = [&](int64_t d) {
    std::unordered_set<uint64_t> set;
    uint64_t b = s.doc_offsets[size_t(d)], e = std::min<uint64_t>(s.doc_offsets[size_t(d + 1)], b + uint64_t(opt.dedup_prefix));
    for (uint64_t t = b; t + 2 < e; ++t)
      set.insert((uint64_t(s.tokens[t]) << 42) ^ (uint64_t(s.tokens[t + 1]) << 21) ^ uint64_t(s.tokens[t + 2]));
    return set;
  };
  auto near_duplicate = [&](int64_t prev, int64_t d) {
    auto a = trigrams(prev), b = trigrams(d);
    if (a.empty() || b.empty()) return false;
    size_t inter = 0;
    for (auto x : a) inter += b.count(x);
    return double(inter) / double(a.size() + b.size() - inter) > opt.dedup_jaccard;
  };
  std::vector<int64_t> walk = greedy_walk(g, near_duplicate, &r.dropped);
  r.order.assign(walk.begin(), walk.end());
  r.walk_s = seconds_since(t0);
  r.adjacent_sim = mean_adjacent_similarity(emb, r.order);
  std::vector<uint64_t> shuffled = r.order;
  std::mt19937_64 rng(1);
  std::shuffle(shuffled.begin(), shuffled.end(), rng);
  r.shuffled_sim = mean_adjacent_similarity(emb, shuffled);
  return r;
}

void write_icp_order(const std::filesystem::path& store, const IcpResult& r, const IcpOptions& opt) {
  StoreGroup g;
  g.u64["order"] = r.order;
  g.ints = {{"k", opt.k}, {"dim", opt.dim}, {"dropped", r.dropped}};
  g.strings = {{"embedding", "hashed-tfidf"}};
  write_store_group(store, "icp", g);
}

std::vector<uint64_t> read_icp_order(const std::filesystem::path& store) {
  auto g = read_store_group(store, "icp");
  check(g.has_value() && g->u64.count("order"), store.string(), " has no in-context order: run `chunkwise data order ",
        store.string(), "`");
  return g->u64.at("order");
}

void reorder_documents(TokenStoreContents& s, const std::vector<uint64_t>& order) {
  TokenStoreContents out;
  out.tokenizer = s.tokenizer;
  out.split = s.split;
  for (uint64_t d : order) {
    check(int64_t(d) < s.n_docs(), "in-context order names document ", d, " but the store has ", s.n_docs(),
          " (re-run `chunkwise data order`)");
    out.tokens.insert(out.tokens.end(), s.tokens.begin() + int64_t(s.doc_offsets[d]), s.tokens.begin() + int64_t(s.doc_offsets[d + 1]));
    out.doc_offsets.push_back(out.tokens.size());
    out.doc_source.push_back(s.doc_source[d]);
  }
  s = std::move(out);
}

}  // namespace cw
