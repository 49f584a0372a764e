// Implementation of train/data_setup.h.
#include "train/data_setup.h"

#include <algorithm>
#include <random>
#include <sstream>

#include "common/error.h"
#include "common/files.h"
#include "data/dd_sampler.h"
#include "data/icp_order.h"
#include "data/packing_sampler.h"
#include "data/replay_sampler.h"
#include "data/sft_store.h"
#include "data/token_store.h"
#include "data/window_sampler.h"

namespace cw {

static TokenStoreContents load_store(const std::string& path, const Tokenizer& tok, const std::string& key) {
  auto store = read_token_store(expand_user(path));
  require_same_tokenizer(path + " ([" + key.substr(0, key.find('.')) + "] " + key.substr(key.find('.') + 1) + ")",
                         store.tokenizer, tok.identity(), tok.path().string());
  return store;
}

static TokenArray load_tokens(const std::string& path, const Tokenizer& tok, const std::string& key) {
  return std::make_shared<const std::vector<uint32_t>>(std::move(load_store(path, tok, key).tokens));
}

// Puts the store's documents in ORDER: natural (as stored), shuffled (seeded permutation) or icp.
static void apply_document_order(TokenStoreContents& store, const std::string& order, const std::string& path,
                                 uint64_t seed) {
  if (order == "natural") return;
  if (order == "icp") return reorder_documents(store, read_icp_order(expand_user(path)));
  check(order == "shuffled", "unknown document order '", order, "' (natural, shuffled, icp)");
  std::vector<uint64_t> perm(static_cast<size_t>(store.n_docs()));
  for (size_t i = 0; i < perm.size(); ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(seed ^ 0x0DDC0FFEEull));
  reorder_documents(store, perm);
}

TrainingData load_training_data(const Recipe& r, const Tokenizer& tok, int64_t rank, int64_t world) {
  check(!r.s("data.train").empty(), r.file().string(), ": [data] train is not set");
  TrainingData d;
  const std::string strategy = r.s("data.strategy");
  TokenStoreContents store = load_store(r.s("data.train"), tok, "data.train");
  std::vector<uint64_t> loss_begin = read_sft_loss_begin(expand_user(r.s("data.train")), store.doc_offsets);
  check(loss_begin.empty() || (strategy == "bestfit" && r.s("data.order") == "natural" && r.s("data.replay").empty()),
        r.file().string(), ": ", r.s("data.train"), " is a supervised fine-tuning store (loss on responses only): "
        "set [data] strategy = bestfit, and leave order natural and replay empty");
  if (r.s("data.order") != "natural") {
    check(strategy == "concat", "[data] order = ", r.s("data.order"), " needs strategy = concat (contexts are cut "
          "from the ordered stream)");
    apply_document_order(store, r.s("data.order"), r.s("data.train"), uint64_t(r.i("run.seed")));
  }
  d.train_tokens = std::make_shared<const std::vector<uint32_t>>(std::move(store.tokens));
  const uint64_t seed = uint64_t(r.i("run.seed"));
  check(r.s("data.replay").empty() || strategy == "concat", "[data] replay works with strategy = concat only");
  WindowSamplerOptions wo;
  wo.seq_len = r.i("data.seq_len"), wo.batch_size = r.i("data.batch_size"), wo.seed = seed;
  wo.rank = rank, wo.world = world;
  if (strategy == "dd") {
    DDSamplerOptions o;
    o.tokens_per_step = r.i("data.batch_size") * r.i("data.seq_len");
    o.curriculum = r.s("data.dd_curriculum"), o.cycles = r.i("data.dd_cycles"), o.seed = seed;
    o.rank = rank, o.world = world;
    d.sampler = std::make_unique<DDSampler>(d.train_tokens, read_decomposition(expand_user(r.s("data.train"))), o);
  } else if (strategy == "bestfit") {
    PackingOptions o;
    o.seq_len = wo.seq_len, o.batch_size = wo.batch_size, o.seed = seed, o.rank = rank, o.world = world;
    d.sampler = std::make_unique<PackingSampler>(d.train_tokens, store.doc_offsets, o, std::move(loss_begin));
  } else if (r.s("data.replay").empty()) {
    d.sampler = std::make_unique<WindowSampler>(d.train_tokens, wo);
  } else {
    WindowSamplerOptions ro = wo;
    ro.seed = seed + 1000003;  // the old data gets its own order
    auto fresh = std::make_unique<WindowSampler>(d.train_tokens, wo);
    auto replay = std::make_unique<WindowSampler>(load_tokens(r.s("data.replay"), tok, "data.replay"), ro);
    d.sampler = std::make_unique<ReplaySampler>(std::move(fresh), std::move(replay), r.f("data.replay_fraction"),
                                                wo.batch_size, seed, rank);
  }
  const int64_t T = r.i("data.seq_len");
  auto add_eval = [&](const std::string& name, std::string path, const std::string& key) {
    std::string order = "natural";  // PATH@ORDER evaluates the documents in another order
    if (size_t at = path.rfind('@'); at != std::string::npos) order = path.substr(at + 1), path = path.substr(0, at);
    TokenStoreContents s = load_store(path, tok, key);
    EvalSet set;
    set.name = name;
    set.loss_begin = read_sft_loss_begin(expand_user(path), s.doc_offsets);
    check(set.loss_begin.empty() || order == "natural", path, ": a supervised fine-tuning store is evaluated in its "
          "own order (drop @", order, ")");
    apply_document_order(s, order, path, 1);
    set.doc_offsets = std::move(s.doc_offsets);
    set.tokens = std::make_shared<const std::vector<uint32_t>>(std::move(s.tokens));
    check(!set.loss_begin.empty() || int64_t(set.tokens->size()) > T, path,
          " holds fewer tokens than one sequence of data.seq_len = ", T);
    d.eval_sets.push_back(std::move(set));
  };
  if (!r.s("data.val").empty()) add_eval("val", r.s("data.val"), "data.val");
  std::stringstream ss(r.s("data.eval_sets"));
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    size_t eq = item.find('=');
    check(eq != std::string::npos && eq > 0, "[data] eval_sets: '", item, "' must look like NAME=PATH");
    add_eval(item.substr(0, eq), item.substr(eq + 1), "data.eval_sets");
  }
  return d;
}

}  // namespace cw
