// Implementation of data/prepare.h.
#include "data/prepare.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <random>
#include <thread>

#include "common/error.h"
#include "common/files.h"
#include "data/corpus.h"
#include "data/token_store.h"

namespace cw {

std::vector<bool> choose_val_docs(int64_t n_docs, double val_fraction, uint64_t seed) {
  check(val_fraction >= 0 && val_fraction < 1, "--val-fraction must be in [0, 1), got ", val_fraction);
  std::vector<int64_t> order(static_cast<size_t>(n_docs));
  for (int64_t i = 0; i < n_docs; ++i) order[size_t(i)] = i;
  std::mt19937_64 rng(seed);
  for (int64_t i = n_docs - 1; i > 0; --i) std::swap(order[size_t(i)], order[size_t(rng() % uint64_t(i + 1))]);
  int64_t n_val = val_fraction > 0 ? std::max<int64_t>(1, int64_t(val_fraction * double(n_docs) + 0.5)) : 0;
  if (n_docs < 2) n_val = 0;
  std::vector<bool> is_val(static_cast<size_t>(n_docs), false);
  for (int64_t i = 0; i < n_val; ++i) is_val[size_t(order[size_t(i)])] = true;
  return is_val;
}

PrepareReport prepare_corpus(const PrepareOptions& opt) {
  Tokenizer tok = Tokenizer::load(opt.tokenizer);
  const TokenizerIdentity& id = tok.identity();
  for (const char* name : {"train.h5", "val.h5"}) {
    fs::path existing = opt.out_dir / name;
    if (fs::exists(existing))
      check(read_token_store_identity(existing) == id, existing.string(), " was made with another tokenizer (",
            read_token_store_identity(existing).describe(), "); this one is ", id.describe(),
            ". Refusing to mix tokenizers: choose a new --out folder or delete the old stores.");
  }
  std::vector<Document> docs = read_documents(opt.inputs);
  check(!docs.empty(), "no documents found in the inputs");
  // Tokenize in parallel; documents keep their order. This thread reports progress while the workers run.
  std::vector<std::vector<int>> ids(docs.size());
  int threads = std::max(1, opt.threads);
  std::atomic<int64_t> done{0}, tokens{0};
  std::atomic<int> working{threads};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (size_t i = size_t(t); i < docs.size(); i += size_t(threads)) {
        ids[i] = tok.encode(docs[i].text);
        tokens += int64_t(ids[i].size()), ++done;
      }
      --working;
    });
  const int64_t n_docs = int64_t(docs.size());
  for (int tick = 0; opt.on_progress && working > 0; ++tick) {  // without a listener: straight to the join
    if (tick % 10 == 0) opt.on_progress(done, n_docs, tokens);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (auto& th : pool) th.join();
  if (opt.on_progress) opt.on_progress(n_docs, n_docs, tokens);

  std::vector<bool> is_val = choose_val_docs(int64_t(docs.size()), opt.val_fraction, opt.seed);
  TokenStoreContents train, val;
  train.split = "train", val.split = "val";
  train.tokenizer = val.tokenizer = id;
  for (size_t i = 0; i < docs.size(); ++i) {
    TokenStoreContents& s = is_val[i] ? val : train;
    for (int t : ids[i]) s.tokens.push_back(uint32_t(t));
    s.tokens.push_back(uint32_t(id.eos_id));
    s.doc_offsets.push_back(s.tokens.size());
    s.doc_source.push_back(docs[i].source);
  }
  check(train.n_docs() > 0, "every document went to validation; lower --val-fraction");
  write_token_store(opt.out_dir / "train.h5", train);
  if (val.n_docs() > 0) write_token_store(opt.out_dir / "val.h5", val);
  return {train.n_docs(), val.n_docs(), int64_t(train.tokens.size()), int64_t(val.tokens.size())};
}

}  // namespace cw
