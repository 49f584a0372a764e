// Corpus -> tokenized HDF5 stores, split by document (deterministic by seed).
// Must not: write a store made with a tokenizer other than the one already in OUT_DIR.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace cw {

struct PrepareOptions {
  std::vector<std::string> inputs;
  std::filesystem::path tokenizer;
  std::filesystem::path out_dir;
  double val_fraction = 0.05;
  uint64_t seed = 1;
  int threads = 2;
  // Called from the calling thread about every 200 ms while documents are tokenized, and once at the end:
  // (documents tokenized, documents in all, tokens so far).
  std::function<void(int64_t, int64_t, int64_t)> on_progress;
};

struct PrepareReport {
  int64_t train_docs = 0, val_docs = 0, train_tokens = 0, val_tokens = 0;
};

// Writes OUT_DIR/train.h5 and OUT_DIR/val.h5 (val omitted when val_fraction is 0).
PrepareReport prepare_corpus(const PrepareOptions& opt);

// Deterministic document split: true for documents that go to validation.
std::vector<bool> choose_val_docs(int64_t n_docs, double val_fraction, uint64_t seed);

}  // namespace cw
