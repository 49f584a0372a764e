// GPU test binary of the fused training kernels (kernels/train_ops.h through models/fused_ops.h): each kernel
// against LibTorch's unfused ops on fresh random inputs (fp32 within 1e-5, bf16 within 1e-2), a model with
// fused_kernels on and off under bf16 autocast, and the memory the fused cross-entropy saves.
// Must not: run without a GPU (every test skips when CUDA is absent).
#include <c10/cuda/CUDACachingAllocator.h>

#include <functional>

#include "tests/fused_ops_checks.h"

namespace cw::test {

#define SKIP_WITHOUT_GPU() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device"

TEST(GpuFusedOps, RopeQkvMatchesApplyRope) {
  SKIP_WITHOUT_GPU();
  torch::manual_seed(1);
  check_fused_rope_qkv(torch::kCUDA, torch::kFloat32, 1e-5, 8);
  check_fused_rope_qkv(torch::kCUDA, torch::kFloat32, 1e-5, 64);
  check_fused_rope_qkv(torch::kCUDA, torch::kBFloat16, 1e-2, 64);
  check_fused_rope_qkv(torch::kCUDA, torch::kBFloat16, 1e-2, 128);
  check_fused_rope_qkv(torch::kCUDA, torch::kBFloat16, 1e-2, 8);  // one pair per unit
}

TEST(GpuFusedOps, SwiGluMatchesSiluTimesUp) {
  SKIP_WITHOUT_GPU();
  torch::manual_seed(2);
  for (int64_t F : {24, 21}) {
    check_fused_swiglu(torch::kCUDA, torch::kFloat32, 1e-5, F);
    check_fused_swiglu(torch::kCUDA, torch::kBFloat16, 1e-2, F);
  }
}

TEST(GpuFusedOps, SwiGluDownRecomputesTheProductInput) {
  SKIP_WITHOUT_GPU();
  torch::manual_seed(6);
  check_fused_swiglu_down(torch::kCUDA, torch::kFloat32, 1e-5);
  check_fused_swiglu_down(torch::kCUDA, torch::kBFloat16, 1e-2);
}

TEST(GpuFusedOps, AddRmsNormMatchesTheFormula) {
  SKIP_WITHOUT_GPU();
  torch::manual_seed(4);
  for (int64_t d : {40, 768, 1100, 4096})  // one, three, five and sixteen columns per thread
    for (bool h_used : {true, false}) {
      SCOPED_TRACE("d " + std::to_string(d) + (h_used ? ", h read afterwards" : ""));
      check_fused_add_rmsnorm(torch::kCUDA, torch::kFloat32, torch::kFloat32, 1e-5, d, h_used);
      check_fused_add_rmsnorm(torch::kCUDA, torch::kBFloat16, torch::kBFloat16, 1e-2, d, h_used);
      check_fused_add_rmsnorm(torch::kCUDA, torch::kFloat32, torch::kBFloat16, 1e-2, d, h_used);
    }
}

TEST(GpuFusedOps, CrossEntropyMatchesTorchWithIgnoredTargets) {
  SKIP_WITHOUT_GPU();
  torch::manual_seed(3);
  for (int64_t V : {104, 101, 32000})
    for (bool overwrite : {false, true}) {
      SCOPED_TRACE("V " + std::to_string(V) + (overwrite ? ", gradient over the logits" : ""));
      check_fused_cross_entropy(torch::kCUDA, torch::kFloat32, 1e-5, V, overwrite);
      check_fused_cross_entropy(torch::kCUDA, torch::kBFloat16, 1e-2, V, overwrite);
    }
}

TEST(GpuFusedOps, ChunkedLinearCrossEntropyMatchesTheFullLogits) {
  SKIP_WITHOUT_GPU();
  torch::manual_seed(5);
  check_fused_linear_cross_entropy(torch::kCUDA, torch::kFloat32, 1e-5);
  check_fused_linear_cross_entropy(torch::kCUDA, torch::kBFloat16, 1e-2);
}

TEST(GpuFusedOps, LlamaLossAndGradientsEqualTheUnfusedModel) {
  SKIP_WITHOUT_GPU();
  check_fused_llama(torch::kCUDA, /*bf16=*/false, 1e-5, 1e-4);  // TF32 is off in this binary: fp32 products
  check_fused_llama(torch::kCUDA, /*bf16=*/true, 1e-2, 2e-2);
  check_fused_llama(torch::kCUDA, /*bf16=*/true, 1e-2, 2e-2, /*loss_chunk=*/7);
}

// FAST(q, k, v) equals attend_reference(q, k, v, REF_MASK) within bf16 tolerance, output and gradients of a
// random weighted sum.
static void expect_attention_matches_reference(torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                               const AttnMask& ref_mask,
                                               const std::function<torch::Tensor()>& fast) {
  for (auto* t : {&q, &k, &v}) t->mutable_grad() = torch::Tensor();
  auto w = torch::randn(q.sizes(), q.options().dtype(torch::kFloat32));
  auto out = fast();
  (out.to(torch::kFloat32) * w).sum().backward();
  std::vector<torch::Tensor> got = {q.grad().clone(), k.grad().clone(), v.grad().clone()};
  for (auto* t : {&q, &k, &v}) t->mutable_grad() = torch::Tensor();
  auto ref = attend_reference(q, k, v, ref_mask);
  (ref.to(torch::kFloat32) * w).sum().backward();
  EXPECT_LE(max_relative_error(out, ref), 1e-2);
  EXPECT_LE(max_relative_error(got[0], q.grad()), 1e-2) << "dq";
  EXPECT_LE(max_relative_error(got[1], k.grad()), 1e-2) << "dk";
  EXPECT_LE(max_relative_error(got[2], v.grad()), 1e-2) << "dv";
}

// Document masks through flash attention's variable-length kernel (runs of segment ids) equal the softmax
// reference with the segment mask, forward and gradients, with grouped-query heads.
TEST(GpuFusedOps, VarlenFlashAttentionEqualsTheSegmentMask) {
  SKIP_WITHOUT_GPU();
  torch::manual_seed(4);
  const int64_t B = 2, T = 40, H = 4, Hkv = 2, D = 64;
  auto opts = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  auto make = [&](int64_t h) { return torch::randn({B, T, h, D}, opts).transpose(1, 2).requires_grad_(true); };
  auto q = make(H), k = make(Hkv), v = make(Hkv);
  auto seg = torch::zeros({B, T}, torch::TensorOptions().dtype(torch::kInt32));
  seg.index_put_({0, torch::indexing::Slice(13, 30)}, 1);
  seg.index_put_({0, torch::indexing::Slice(30, T)}, -1);  // padding at the row's end is a run of its own
  seg.index_put_({1, torch::indexing::Slice(1, T)}, 1);
  AttnMask m;
  m.q_offset = 0;
  m.q_segments = m.k_segments = seg.to(torch::kCUDA);
  AttnMask plain = m;
  attach_segment_runs(m);
  EXPECT_EQ(m.max_seqlen, 39);
  expect_attention_matches_reference(q, k, v, plain, [&] { return attend(q, k, v, m); });
}

// train.attention = flash | cudnn: each puts its kernel first, the pick follows, and both equal the softmax
// reference, forward and gradients; auto restores LibTorch's own pick.
TEST(GpuFusedOps, ChosenAttentionBackendEqualsTheReference) {
  SKIP_WITHOUT_GPU();
  torch::manual_seed(7);
  auto opts = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  const int64_t B = 2, H = 4, T = 256, D = 64;
  auto make = [&] { return torch::randn({B, T, H, D}, opts).transpose(1, 2).requires_grad_(true); };
  auto q = make(), k = make(), v = make();
  AttnMask m;
  m.q_offset = 0;
  const std::string libtorch_pick = attention_backend_for(q, k, v);
  for (std::string backend : {"flash", "cudnn"}) {
    SCOPED_TRACE(backend);
    set_attention_backend(backend);
    EXPECT_EQ(attention_backend_for(q, k, v), backend);
    expect_attention_matches_reference(q, k, v, m, [&] {
      auto out = attend(q, k, v, m);
      set_attention_backend("auto");  // the backward pass runs the kernels the forward pass picked
      return out;
    });
    EXPECT_EQ(attention_backend_for(q, k, v), libtorch_pick);
  }
}

// 8,192 rows of 32,000 bf16 logits: the fused loss and gradient allocate well under torch's path (fp32 copy,
// log-softmax and fp32 gradient).
TEST(GpuFusedOps, CrossEntropyAllocatesNoFp32Logits) {
  SKIP_WITHOUT_GPU();
  const int64_t N = 8192, V = 32000;
  auto peak_after = [&](bool fused) {
    auto opts = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
    auto base = torch::randn({N, V}, opts).requires_grad_(true);
    auto targets = torch::randint(0, V, {N}, torch::TensorOptions().dtype(torch::kInt64).device(torch::kCUDA));
    torch::cuda::synchronize();
    c10::cuda::CUDACachingAllocator::emptyCache();
    c10::cuda::CUDACachingAllocator::resetPeakStats(0);
    auto before = c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].current;
    auto logits = base * 1.0;
    torch::Tensor loss = fused ? fused_cross_entropy_sum(logits, targets, true)
                               : torch::nn::functional::cross_entropy(logits.to(torch::kFloat32), targets,
                                                                      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    loss.backward();
    torch::cuda::synchronize();
    return double(c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].peak - before);
  };
  const double logits_bytes = double(N) * V * 2;
  const double fused = peak_after(true), unfused = peak_after(false);
  std::cout << "peak above the inputs: fused " << fused / logits_bytes << " x bf16 logits, torch " << unfused / logits_bytes
            << " x\n";
  EXPECT_LE(fused, 2.1 * logits_bytes);  // the logits and base's gradient, nothing of fp32 size
  EXPECT_LT(fused, 0.5 * unfused);
}

}  // namespace cw::test
