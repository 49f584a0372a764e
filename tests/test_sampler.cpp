// Fixed-window sampler: determinism, one visit per window per epoch, shifted targets, rank sharding,
// and restore() continuing the exact same batches.
#include <gtest/gtest.h>

#include <set>

#include "common/error.h"
#include "data/window_sampler.h"

using namespace cw;

static std::shared_ptr<const std::vector<uint32_t>> stream(int64_t n) {
  auto v = std::make_shared<std::vector<uint32_t>>();
  for (int64_t i = 0; i < n; ++i) v->push_back(uint32_t(i));
  return v;
}

TEST(WindowSampler, DeterministicBySeedAndTargetsAreShifted) {
  WindowSamplerOptions o;
  o.seq_len = 8, o.batch_size = 3, o.seed = 11;
  WindowSampler a(stream(1000), o), b(stream(1000), o);
  o.seed = 12;
  WindowSampler c(stream(1000), o);
  bool differs = false;
  for (int i = 0; i < 20; ++i) {
    Batch x = a.next(), y = b.next(), z = c.next();
    EXPECT_TRUE(torch::equal(x.tokens, y.tokens));
    differs |= !torch::equal(x.tokens, z.tokens);
    EXPECT_TRUE(torch::equal(x.targets, x.tokens + 1));  // the stream is 0,1,2,...
    EXPECT_EQ(x.tokens.sizes(), (std::vector<int64_t>{3, 8}));
    EXPECT_EQ(x.n_target_tokens, 24);
    EXPECT_EQ(x.tokens.index({torch::indexing::Slice(), 0}).remainder(8).sum().item<int64_t>(), 0);  // window starts
  }
  EXPECT_TRUE(differs);
}

TEST(WindowSampler, EachWindowOncePerEpoch) {
  WindowSamplerOptions o;
  o.seq_len = 10, o.batch_size = 4;
  WindowSampler s(stream(1001), o);  // 100 windows, 25 batches
  std::set<int64_t> seen;
  for (int i = 0; i < s.batches_per_epoch(); ++i) {
    Batch b = s.next();
    for (int r = 0; r < 4; ++r) EXPECT_TRUE(seen.insert(b.tokens[r][0].item<int64_t>()).second);
  }
  EXPECT_EQ(seen.size(), 100u);
  EXPECT_EQ(s.epoch(), 0);
  s.next();
  EXPECT_EQ(s.epoch(), 1);
}

TEST(WindowSampler, RanksTakeDisjointShares) {
  WindowSamplerOptions o;
  o.seq_len = 10, o.batch_size = 2, o.world = 2;
  std::set<int64_t> seen;
  for (int rank = 0; rank < 2; ++rank) {
    o.rank = rank;
    WindowSampler s(stream(1001), o);
    for (int i = 0; i < 25; ++i) {
      Batch b = s.next();
      for (int r = 0; r < 2; ++r) EXPECT_TRUE(seen.insert(b.tokens[r][0].item<int64_t>()).second);
    }
  }
  EXPECT_EQ(seen.size(), 100u);
}

TEST(WindowSampler, RestoreContinuesTheSameBatchesAcrossEpochs) {
  WindowSamplerOptions o;
  o.seq_len = 7, o.batch_size = 5;
  WindowSampler a(stream(500), o);
  for (int i = 0; i < 17; ++i) a.next();  // past the first epoch (14 batches)
  std::string state = a.state();
  WindowSampler b(stream(500), o);
  b.restore(state);
  for (int i = 0; i < 30; ++i) EXPECT_TRUE(torch::equal(a.next().tokens, b.next().tokens)) << i;
  o.seq_len = 8;
  WindowSampler other(stream(500), o);
  EXPECT_THROW(other.restore(state), UserError);
}

TEST(WindowSampler, TooLittleDataIsAClearError) {
  WindowSamplerOptions o;
  o.seq_len = 100, o.batch_size = 4;
  EXPECT_THROW(WindowSampler(stream(150), o), UserError);
}
