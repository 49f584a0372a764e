// In-context pretraining order (Shi et al. 2023): embed every document (hashed TF-IDF of its token ids),
// build the exact k-nearest-neighbour graph by blocked matrix products with top-k (on the GPU when asked),
// then walk it greedily: restart from an unvisited document of minimum degree, always step to the most
// similar unvisited neighbour, and drop a document whose first tokens are a near-duplicate (3-gram Jaccard)
// of the previously written one. Training then concatenates documents in this order and shuffles contexts.
// Must not: change the store's tokens (the order is written as icp/order).
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <vector>

#include "data/token_store.h"

namespace cw {

struct IcpOptions {
  int64_t dim = 256;        // hashed feature dimensions
  int64_t k = 50;           // neighbours per document
  int64_t block = 1024;     // query rows per matrix product
  double dedup_jaccard = 0.85;
  int64_t dedup_prefix = 100;  // tokens compared for near-duplicates
  torch::Device device = torch::kCPU;
  // Called after each block of the neighbour search (the long part): (documents searched, documents in all).
  std::function<void(int64_t, int64_t)> on_progress;
};

struct KnnGraph {
  torch::Tensor index;  // [N, k] int64, neighbours by decreasing similarity
  torch::Tensor sim;    // [N, k] float32
};

struct IcpResult {
  std::vector<uint64_t> order;  // kept documents, in training order
  int64_t dropped = 0;          // near-duplicates removed
  double embed_s = 0, knn_s = 0, walk_s = 0;
  double adjacent_sim = 0, shuffled_sim = 0;  // mean cosine of consecutive documents: this order vs random
};

torch::Tensor hashed_tfidf(const TokenStoreContents& store, int64_t dim);  // [N, dim] float32, rows L2-normalised
KnnGraph knn_exact(const torch::Tensor& embeddings, int64_t k, int64_t block, const torch::Device& device,
                   const std::function<void(int64_t, int64_t)>& on_progress = {});
KnnGraph knn_reference(const torch::Tensor& embeddings, int64_t k);  // one full product; tests compare
// Greedy walk; SKIP(prev_written, d) says whether d is dropped as a near-duplicate of the previous one.
std::vector<int64_t> greedy_walk(const KnnGraph& g, const std::function<bool(int64_t, int64_t)>& skip,
                                 int64_t* dropped);
IcpResult icp_order(const TokenStoreContents& store, const IcpOptions& opt);
double mean_adjacent_similarity(const torch::Tensor& embeddings, const std::vector<uint64_t>& order);

void write_icp_order(const std::filesystem::path& store, const IcpResult& r, const IcpOptions& opt);
std::vector<uint64_t> read_icp_order(const std::filesystem::path& store);
// Keeps the documents of ORDER, in that order (tokens, offsets and sources rebuilt).
void reorder_documents(TokenStoreContents& store, const std::vector<uint64_t>& order);

}  // namespace cw
