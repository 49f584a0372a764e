// Dataset decomposition, the variable-length curriculum sampler, best-fit packing with document masks,
// and in-context pretraining order: every check of the spec (data.md sections 1 and 2); re-cut stores.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <random>
#include <set>

#include "common/error.h"
#include "data/dd_sampler.h"
#include "data/decompose.h"
#include "data/icp_order.h"
#include "data/packing_sampler.h"
#include "data/recut.h"
#include "models/llama.h"
#include "tests/test_util.h"

using namespace cw;
using namespace cw::test;

// Documents of varied lengths (each ending in its "EOS"), token = document id * 100000 + position.
static std::pair<std::shared_ptr<std::vector<uint32_t>>, std::vector<uint64_t>> corpus(int n_docs, uint64_t seed) {
  auto tokens = std::make_shared<std::vector<uint32_t>>();
  std::vector<uint64_t> offsets{0};
  std::mt19937_64 rng(seed);
  for (int d = 0; d < n_docs; ++d) {
    uint64_t len = 2 + rng() % (rng() % 4 == 0 ? 3000 : 300);
    for (uint64_t i = 0; i < len; ++i) tokens->push_back(uint32_t(d * 100000 + i));
    offsets.push_back(tokens->size());
  }
  return {tokens, offsets};
}

static int doc_of(const std::vector<uint64_t>& offsets, uint64_t pos) {
  return int(std::upper_bound(offsets.begin(), offsets.end(), pos) - offsets.begin()) - 1;
}

TEST(Decomposition, PiecesArePowersOfTwoPlusOneInsideOneDocument) {
  auto [tokens, offsets] = corpus(400, 1);
  Decomposition d = decompose_documents(offsets, 4, 9, "random", 3);
  int64_t covered = 0;
  for (int k = 4; k <= 9; ++k)
    for (uint64_t s : d.bucket(k)) {
      const uint64_t e = s + (1u << k) + 1;  // exclusive end
      EXPECT_EQ(doc_of(offsets, s), doc_of(offsets, e - 1)) << "piece crosses a document boundary";
      covered += (1 << k) + 1;
    }
  EXPECT_EQ(covered + d.dropped_tokens, int64_t(tokens->size()));
}

TEST(Decomposition, DeterministicPiecesAreContiguousInOrderWithShortTails) {
  auto [tokens, offsets] = corpus(300, 2);
  Decomposition d = decompose_documents(offsets, 4, 9, "deterministic", 0);
  std::map<uint64_t, int> start_k;
  for (int k = 4; k <= 9; ++k)
    for (uint64_t s : d.bucket(k)) start_k[s] = k;
  for (size_t doc = 0; doc + 1 < offsets.size(); ++doc) {
    uint64_t pos = offsets[doc];
    int prev_k = 99;
    while (pos < offsets[doc + 1] && start_k.count(pos)) {  // pieces follow each other with no gap, longest first
      int k = start_k[pos];
      EXPECT_LE(k, prev_k);
      prev_k = k;
      pos += (1u << k) + 1;
    }
    EXPECT_LE(offsets[doc + 1] - pos, 1u << 4) << "tail longer than 2^kmin";  // then only a short tail
  }
}

static DDSampler dd_sampler(const std::string& curriculum, int64_t rank = 0, int64_t world = 1, int64_t cycles = 2) {
  auto [tokens, offsets] = corpus(1500, 4);
  DDSamplerOptions o;
  o.tokens_per_step = 1024, o.curriculum = curriculum, o.cycles = cycles, o.seed = 5, o.rank = rank, o.world = world;
  return DDSampler(tokens, decompose_documents(offsets, 4, 8, "random", 3), o);
}

TEST(DDSampler, ConstantTokensPerStepAndEachPieceOncePerEpoch) {
  DDSampler s = dd_sampler("grow_p2");
  std::set<std::pair<int, uint64_t>> seen;
  const int64_t n = s.batches_per_epoch();
  ASSERT_GT(n, 20);
  for (int64_t i = 0; i < n; ++i) {
    Batch b = s.next();
    EXPECT_EQ(b.tokens.numel(), 1024);
    EXPECT_EQ(b.tokens.size(1), int64_t(1) << s.last_k());
    EXPECT_TRUE(torch::equal(b.targets.index({torch::indexing::Slice(), torch::indexing::Slice(0, -1)}),
                             b.tokens.index({torch::indexing::Slice(), torch::indexing::Slice(1, torch::indexing::None)})));
    for (uint64_t p : s.last_pieces()) EXPECT_TRUE(seen.insert({s.last_k(), p}).second) << "piece used twice";
  }
}

TEST(DDSampler, RanksDrawTheSameBucketsAndDisjointPieces) {
  DDSampler a = dd_sampler("grow_p2", 0, 2), b = dd_sampler("grow_p2", 1, 2);
  for (int i = 0; i < 40; ++i) {
    a.next();
    b.next();
    ASSERT_EQ(a.last_k(), b.last_k());
    for (uint64_t p : a.last_pieces())
      EXPECT_EQ(std::count(b.last_pieces().begin(), b.last_pieces().end(), p), 0);
  }
}

TEST(DDSampler, GrowCurriculumDrainsShortBucketsFirst) {
  // Mean position (within its cycle) at which each bucket's batches are drawn: increasing with k for Grow-P2,
  // decreasing for Shrink.
  for (std::string c : {"grow_p2", "shrink_p2"}) {
    DDSampler s = dd_sampler(c, 0, 1, 1);
    std::map<int, std::pair<double, int>> pos;
    const int64_t n = s.batches_per_epoch();
    for (int64_t i = 0; i < n; ++i) {
      s.next();
      pos[s.last_k()].first += double(i) / double(n);
      pos[s.last_k()].second += 1;
    }
    double first = pos[4].first / pos[4].second, last = pos[8].first / pos[8].second;
    if (c == "grow_p2") EXPECT_LT(first, last);
    else EXPECT_GT(first, last);
  }
}

TEST(DDSampler, ResumingMidCycleContinuesTheSameBatches) {
  DDSampler a = dd_sampler("grow_linear");
  for (int i = 0; i < 23; ++i) a.next();
  std::string st = a.state();
  DDSampler b = dd_sampler("grow_linear");
  b.restore(st);
  for (int i = 0; i < 200; ++i) ASSERT_TRUE(torch::equal(a.next().tokens, b.next().tokens)) << i;  // across cycles
  DDSampler other = dd_sampler("uniform");
  EXPECT_THROW(other.restore(st), UserError);
}

TEST(BestFitPacking, RowsHoldWholeChunksWithRestartingPositionsAndNoCrossDocumentTargets) {
  auto [tokens, offsets] = corpus(300, 6);
  PackingOptions o;
  o.seq_len = 512, o.batch_size = 4, o.seed = 2;
  PackingSampler s(tokens, offsets, o);
  EXPECT_GT(s.fill(), 0.9);
  for (int i = 0; i < 20; ++i) {
    Batch b = s.next();
    ASSERT_TRUE(b.has_segments);
    auto tk = b.tokens.accessor<int64_t, 2>();
    auto tg = b.targets.accessor<int64_t, 2>();
    auto ps = b.positions.accessor<int64_t, 2>();
    auto sg = b.segments.accessor<int32_t, 2>();
    int64_t targets = 0;
    for (int64_t r = 0; r < 4; ++r)
      for (int64_t t = 0; t < 512; ++t) {
        if (sg[r][t] < 0) continue;  // padding
        if (t > 0 && sg[r][t] == sg[r][t - 1]) {
          EXPECT_EQ(ps[r][t], ps[r][t - 1] + 1);
          EXPECT_EQ(tk[r][t] / 100000, tk[r][t - 1] / 100000) << "two documents in one segment";
        } else {
          EXPECT_EQ(ps[r][t], 0);
        }
        if (tg[r][t] != kIgnoreIndex) {
          EXPECT_EQ(tg[r][t], tk[r][t] + 1);  // the next token of the same document
          ++targets;
        }
      }
    EXPECT_EQ(targets, b.n_target_tokens);
  }
}

TEST(BestFitPacking, PackedLossEqualsEachDocumentAlone) {
  // Document masking and restarting positions make a packed row's loss the sum of its documents' losses.
  torch::manual_seed(2);
  ModelConfig c;
  c.vocab_size = 64, c.d_model = 16, c.n_layers = 2, c.n_heads = 2, c.n_kv_heads = 1, c.d_ff = 32, c.max_seq_len = 64;
  Llama model(c);
  model.to(torch::kFloat64);
  auto tokens = std::make_shared<std::vector<uint32_t>>();
  std::vector<uint64_t> offsets{0};
  std::mt19937_64 rng(3);
  for (int d = 0; d < 12; ++d) {
    for (uint64_t i = 0, n = 3 + rng() % 20; i < n; ++i) tokens->push_back(uint32_t(rng() % 64));
    offsets.push_back(tokens->size());
  }
  PackingOptions o;
  o.seq_len = 48, o.batch_size = 1;
  PackingSampler s(tokens, offsets, o);
  Batch packed = s.next();
  double alone = 0;
  auto sg = packed.segments[0];
  for (int32_t seg = 0; seg <= sg.max().item<int32_t>(); ++seg) {
    auto idx = (sg == seg).nonzero().squeeze(1);
    Batch one;
    one.tokens = packed.tokens[0].index_select(0, idx).unsqueeze(0);
    one.targets = packed.targets[0].index_select(0, idx).unsqueeze(0);
    one.positions = torch::arange(idx.size(0), torch::kInt64).unsqueeze(0);
    alone += model.loss_sum(one).item<double>();
  }
  EXPECT_NEAR(model.loss_sum(packed).item<double>(), alone, 1e-9);
}

TEST(IcpOrder, ExactKnnMatchesTheReference) {
  torch::manual_seed(4);
  auto e = torch::nn::functional::normalize(torch::randn({300, 16}), torch::nn::functional::NormalizeFuncOptions().dim(1));
  std::vector<int64_t> searched;  // progress: one report per block of 64 rows, the last one all 300
  KnnGraph fast = knn_exact(e, 7, 64, torch::kCPU, [&](int64_t done, int64_t total) {
    EXPECT_EQ(total, 300);
    searched.push_back(done);
  });
  KnnGraph ref = knn_reference(e, 7);
  EXPECT_TRUE(torch::equal(fast.index, ref.index));
  EXPECT_TRUE(torch::allclose(fast.sim, ref.sim, 1e-5, 1e-6));
  EXPECT_EQ(searched, (std::vector<int64_t>{64, 128, 192, 256, 300}));
}

// The traversal written from the spec's pseudo-code, O(N^2), for toy graphs.
static std::vector<int64_t> walk_reference(const KnnGraph& g) {
  const int64_t n = g.index.size(0), k = g.index.size(1);
  std::vector<int64_t> degree(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) ++degree[size_t(g.index[i][j].item<int64_t>())];
  std::set<int64_t> unvisited;
  for (int64_t i = 0; i < n; ++i) unvisited.insert(i);
  std::vector<int64_t> out;
  while (!unvisited.empty()) {
    int64_t d = *std::min_element(unvisited.begin(), unvisited.end(),
                                  [&](int64_t a, int64_t b) { return std::make_pair(degree[size_t(a)], a) < std::make_pair(degree[size_t(b)], b); });
    out.push_back(d), unvisited.erase(d);
    for (;;) {
      int64_t best = -1;
      float best_sim = -1e30f;
      for (int64_t j = 0; j < k; ++j) {
        int64_t u = g.index[d][j].item<int64_t>();
        if (unvisited.count(u) && g.sim[d][j].item<float>() > best_sim) best = u, best_sim = g.sim[d][j].item<float>();
      }
      if (best < 0) break;
      d = best;
      out.push_back(d), unvisited.erase(d);
    }
  }
  return out;
}

TEST(IcpOrder, GreedyWalkAgreesWithBruteForceAndIsAPermutation) {
  for (uint64_t seed : {1, 2, 3}) {
    torch::manual_seed(seed);
    auto e = torch::nn::functional::normalize(torch::randn({120, 8}), torch::nn::functional::NormalizeFuncOptions().dim(1));
    KnnGraph g = knn_exact(e, 5, 32, torch::kCPU);
    int64_t dropped = 0;
    auto walk = greedy_walk(g, nullptr, &dropped);
    EXPECT_EQ(walk, walk_reference(g));
    EXPECT_EQ(std::set<int64_t>(walk.begin(), walk.end()).size(), 120u);
    EXPECT_EQ(dropped, 0);
  }
}

TEST(IcpOrder, NeighboursInTheOrderShareTopics) {
  torch::manual_seed(6);
  const int64_t n = 3000, topics = 30;
  auto centers = torch::randn({topics, 32});
  auto topic = torch::randint(0, topics, {n}, torch::kInt64);
  auto e = torch::nn::functional::normalize(centers.index_select(0, topic) + 0.5 * torch::randn({n, 32}),
                                            torch::nn::functional::NormalizeFuncOptions().dim(1));
  auto walk = greedy_walk(knn_exact(e, 10, 256, torch::kCPU), nullptr, nullptr);
  std::vector<uint64_t> order(walk.begin(), walk.end());
  int same = 0;
  for (size_t i = 1; i < walk.size(); ++i) same += topic[walk[i]].item<int64_t>() == topic[walk[i - 1]].item<int64_t>();
  EXPECT_GT(double(same) / double(n - 1), 0.75);  // random order: 1/30
  std::vector<uint64_t> shuffled = order;
  std::shuffle(shuffled.begin(), shuffled.end(), std::mt19937_64(1));
  EXPECT_GT(mean_adjacent_similarity(e, order), 5 * mean_adjacent_similarity(e, shuffled));
}

TEST(IcpOrder, RealStoreOrderIsCoherentDedupedAndReadBack) {
  fs::path data = shared_prepared_data();
  auto dir = scratch_dir("icp");
  fs::copy_file(data / "train.h5", dir / "train.h5");
  auto store = read_token_store(dir / "train.h5");
  // Two exact copies of document 0: one of them must be dropped as a near-duplicate.
  TokenStoreContents dup = store;
  dup.tokens.insert(dup.tokens.end(), store.tokens.begin(), store.tokens.begin() + int64_t(store.doc_offsets[1]));
  dup.doc_offsets.push_back(dup.tokens.size());
  dup.doc_source.push_back("copy");
  IcpOptions o;
  o.k = 10;
  IcpResult r = icp_order(dup, o);
  EXPECT_EQ(int64_t(r.order.size()) + r.dropped, dup.n_docs());
  EXPECT_GE(r.dropped, 1);
  EXPECT_EQ(std::set<uint64_t>(r.order.begin(), r.order.end()).size(), r.order.size());
  EXPECT_GT(r.adjacent_sim, r.shuffled_sim);  // a one-topic toy corpus: the clustered test below checks >>
  IcpResult plain = icp_order(store, o);
  write_icp_order(dir / "train.h5", plain, o);
  EXPECT_EQ(read_icp_order(dir / "train.h5"), plain.order);
  EXPECT_EQ(read_token_store(dir / "train.h5").tokens, store.tokens);  // the store's tokens are untouched
  reorder_documents(store, plain.order);
  EXPECT_EQ(store.n_docs(), int64_t(plain.order.size()));
  // Settings of zero are refused by name (a zero dimension divided by zero, a zero block never advanced).
  for (auto bad : {&IcpOptions::k, &IcpOptions::dim, &IcpOptions::block}) {
    IcpOptions zero = o;
    zero.*bad = 0;
    EXPECT_NE(user_error_of([&] { icp_order(store, zero); }).find("got k = "), std::string::npos);
  }
}

TEST(Decomposition, WrittenIntoTheStoreAndReadBack) {
  fs::path data = shared_prepared_data();
  auto dir = scratch_dir("dd-store");
  fs::copy_file(data / "train.h5", dir / "train.h5");
  auto store = read_token_store(dir / "train.h5");
  EXPECT_THROW(read_decomposition(dir / "train.h5"), UserError);
  Decomposition d = decompose_documents(store.doc_offsets, 3, 6, "random", 9);
  write_decomposition(dir / "train.h5", d);
  Decomposition back = read_decomposition(dir / "train.h5");
  EXPECT_EQ(back.starts, d.starts);
  EXPECT_EQ(back.kmin, 3);
  EXPECT_EQ(back.mode, "random");
  EXPECT_EQ(read_token_store(dir / "train.h5").tokens, store.tokens);
}

TEST(Recut, LengthsAreLogNormalAndTheSourceTextKeepsItsOrder) {
  TokenStoreContents source;
  source.tokenizer.eos_id = 2, source.tokenizer.vocab_size = 5000, source.split = "train";
  for (uint32_t d = 0; d < 50; ++d) {  // 50 documents of 3..99 tokens, EOS (2) after each
    for (uint32_t i = 0; i < 3 + d * 2; ++i) source.tokens.push_back(10 + (d * 31 + i) % 4000);
    source.tokens.push_back(2);
    source.doc_offsets.push_back(source.tokens.size());
    source.doc_source.push_back("d" + std::to_string(d));
  }
  RecutOptions o;
  o.docs = 4000, o.median = 300, o.sigma = 0.8, o.seed = 5;
  TokenStoreContents out = recut_documents(source, o);
  ASSERT_EQ(out.n_docs(), 4000);
  EXPECT_TRUE(out.tokenizer == source.tokenizer);
  std::vector<uint32_t> text;
  for (uint32_t t : source.tokens)
    if (t != 2) text.push_back(t);
  std::vector<double> logs;
  size_t next = 0;
  for (int64_t d = 0; d < out.n_docs(); ++d) {
    const uint64_t a = out.doc_offsets[d], b = out.doc_offsets[d + 1];
    ASSERT_GE(b - a, 2u);
    ASSERT_EQ(out.tokens[b - 1], 2u) << "document " << d << " ends in EOS";
    for (uint64_t i = a; i + 1 < b; ++i, next = (next + 1) % text.size())
      ASSERT_EQ(out.tokens[i], text[next]) << "the source's text continues in order, wrapping around";
    logs.push_back(std::log(double(b - a)));
  }
  std::sort(logs.begin(), logs.end());
  EXPECT_NEAR(std::exp(logs[logs.size() / 2]), 300, 300 * 0.06);  // median
  double mean = 0, var = 0;
  for (double l : logs) mean += l / double(logs.size());
  for (double l : logs) var += (l - mean) * (l - mean) / double(logs.size());
  EXPECT_NEAR(std::sqrt(var), 0.8, 0.04);

  EXPECT_EQ(recut_documents(source, o).doc_offsets, out.doc_offsets);  // seeded
  o.seed = 6;
  EXPECT_NE(recut_documents(source, o).doc_offsets, out.doc_offsets);
  o.median = 1;
  EXPECT_THROW(recut_documents(source, o), UserError);
  o.median = 300, o.docs = 0;
  EXPECT_THROW(recut_documents(source, o), UserError);
  TokenStoreContents only_eos = source;
  only_eos.tokens.assign(only_eos.tokens.size(), 2);
  o.docs = 10;
  EXPECT_THROW(recut_documents(only_eos, o), UserError);
}
