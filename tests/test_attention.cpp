// attend() (fused SDPA path or explicit mask) against the plain softmax reference for every mask kind.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/attention.h"
#include "tests/test_util.h"

using namespace cw;

static void expect_close(const torch::Tensor& a, const torch::Tensor& b, double rtol) {
  ASSERT_EQ(a.sizes(), b.sizes());
  ASSERT_FALSE(a.isnan().any().item<bool>());
  double err = (a - b).abs().max().item<double>(), scale = b.abs().max().item<double>();
  EXPECT_LE(err, rtol * std::max(scale, 1.0)) << "max abs error " << err;
}

struct Case {
  int64_t B, Hq, Hkv, Tq, Tk, D;
};

static void check_mask(const Case& c, AttnMask m) {
  auto q = torch::randn({c.B, c.Hq, c.Tq, c.D}), k = torch::randn({c.B, c.Hkv, c.Tk, c.D}),
       v = torch::randn({c.B, c.Hkv, c.Tk, c.D});
  expect_close(attend(q, k, v, m), attend_reference(q, k, v, m), 1e-5);
}

TEST(Attention, PlainCausalUsesFusedPathAndMatches) { check_mask({2, 4, 4, 33, 33, 16}, AttnMask{}); }

TEST(Attention, GroupedQueryHeads) { check_mask({2, 8, 2, 20, 20, 8}, AttnMask{}); }

TEST(Attention, BottomRightCausalForChunkAgainstCache) {
  check_mask({1, 4, 2, 7, 30, 16}, AttnMask{});  // q_offset -1: queries are the last 7 positions
  AttnMask m;
  m.q_offset = 5;
  check_mask({1, 4, 4, 7, 30, 16}, m);
  // Bottom-right: the last query sees every key, the first sees Tk - Tq + 1 keys.
  auto mask = build_attention_mask(3, 10, AttnMask{}, torch::kCPU);
  EXPECT_EQ(mask[0][0][0].sum().item<int64_t>(), 8);
  EXPECT_EQ(mask[0][0][2].sum().item<int64_t>(), 10);
}

TEST(Attention, DocumentSegments) {
  AttnMask m;
  m.q_segments = m.k_segments = torch::tensor({0, 0, 0, 1, 1, 2, 2, 2, 2, 3}, torch::kInt32).unsqueeze(0).repeat({2, 1});
  check_mask({2, 2, 2, 10, 10, 8}, m);
  // Token 3 (first of document 1) sees only itself: its output equals its own value vector.
  auto q = torch::randn({2, 2, 10, 8}), k = torch::randn({2, 2, 10, 8}), v = torch::randn({2, 2, 10, 8});
  auto y = attend(q, k, v, m);
  EXPECT_TRUE(torch::allclose(y.index({torch::indexing::Slice(), torch::indexing::Slice(), 3}),
                              v.index({torch::indexing::Slice(), torch::indexing::Slice(), 3}), 1e-5, 1e-6));
}

TEST(Attention, SlidingWindowAndBidirectional) {
  AttnMask w;
  w.window = 4;
  check_mask({1, 2, 2, 16, 16, 8}, w);
  // Windows shorter than the sequence run in blocks of `window` queries: ragged last blocks, grouped heads,
  // a window of one token, and the gradients of the blocked path equal the full mask's.
  for (int64_t window : {1, 5, 8, 36, 37, 50}) {
    SCOPED_TRACE("window " + std::to_string(window));
    w.window = window;
    check_mask({2, 4, 2, 37, 37, 8}, w);
    auto o = torch::TensorOptions().dtype(torch::kFloat64).requires_grad(true);
    auto q = torch::randn({1, 2, 37, 8}, o), k = torch::randn({1, 2, 37, 8}, o), v = torch::randn({1, 2, 37, 8}, o);
    auto g = torch::randn({1, 2, 37, 8}, torch::kFloat64);
    auto got = torch::autograd::grad({(attend(q, k, v, w) * g).sum()}, {q, k, v});
    auto want = torch::autograd::grad({(attend_reference(q, k, v, w) * g).sum()}, {q, k, v});
    for (size_t i = 0; i < 3; ++i) expect_close(got[i], want[i], 1e-12);
  }
  AttnMask full;
  full.causal = false;
  check_mask({1, 2, 1, 5, 12, 8}, full);
}

TEST(Attention, SegmentRunsAreCumulativeLengthsOverFlattenedRows) {
  AttnMask m;
  m.q_segments = m.k_segments = torch::tensor({0, 0, 1, 1, 1, -1, 0, 1, 1, 1, 1, 1}, torch::kInt32).view({2, 6});
  attach_segment_runs(m);
  EXPECT_TRUE(torch::equal(m.cu_seqlens, torch::tensor({0, 2, 5, 6, 7, 12}, torch::kInt32)));
  EXPECT_EQ(m.max_seqlen, 5);
  // A row that starts with the previous row's last id still starts a run.
  m.q_segments = m.k_segments = torch::tensor({0, 0, 0, 0}, torch::kInt32).view({2, 2});
  attach_segment_runs(m);
  EXPECT_TRUE(torch::equal(m.cu_seqlens, torch::tensor({0, 2, 4}, torch::kInt32)));
  EXPECT_EQ(m.max_seqlen, 2);
}

TEST(Attention, BackendOrderIsValidatedAndKeepsResults) {
  EXPECT_NE(cw::test::user_error_of([] { set_attention_backend("fa9"); }).find("flash or cudnn"), std::string::npos);
  torch::manual_seed(6);
  auto q = torch::randn({1, 2, 9, 8}), k = torch::randn({1, 2, 9, 8}), v = torch::randn({1, 2, 9, 8});
  AttnMask m;
  m.q_offset = 0;
  set_attention_backend("cudnn");  // on the CPU the order changes nothing
  auto out = attend(q, k, v, m);
  set_attention_backend("flash");
  EXPECT_TRUE(torch::allclose(out, attend_reference(q, k, v, m), 1e-5, 1e-5));
}
