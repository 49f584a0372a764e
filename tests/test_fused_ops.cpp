// Fused training ops on the CPU (the same item and row functions the CUDA kernels run) against LibTorch's
// unfused ops: fp32 within 1e-5, bf16 storage within 1e-2, and a whole model with fused_kernels on and off.
#include "tests/fused_ops_checks.h"
#include "tests/test_util.h"

namespace cw::test {

TEST(FusedOps, RopeQkvMatchesApplyRope) {
  torch::manual_seed(1);
  check_fused_rope_qkv(torch::kCPU, torch::kFloat32, 1e-5, 8);
  check_fused_rope_qkv(torch::kCPU, torch::kFloat32, 1e-5, 64);
  check_fused_rope_qkv(torch::kCPU, torch::kBFloat16, 1e-2, 64);  // units of 8 pairs, as on the GPU
  check_fused_rope_qkv(torch::kCPU, torch::kBFloat16, 1e-2, 8);   // units of one pair
}

TEST(FusedOps, SwiGluMatchesSiluTimesUp) {
  torch::manual_seed(2);
  check_fused_swiglu(torch::kCPU, torch::kFloat32, 1e-5);
  check_fused_swiglu(torch::kCPU, torch::kBFloat16, 1e-2);
}

TEST(FusedOps, SwiGluDownRecomputesTheProductInput) {
  torch::manual_seed(6);
  check_fused_swiglu_down(torch::kCPU, torch::kFloat32, 1e-5);
  check_fused_swiglu_down(torch::kCPU, torch::kBFloat16, 1e-2);
}

TEST(FusedOps, AddRmsNormMatchesTheFormula) {
  torch::manual_seed(4);
  for (bool h_used : {true, false}) {
    SCOPED_TRACE(h_used ? "h read afterwards" : "h not read");
    check_fused_add_rmsnorm(torch::kCPU, torch::kFloat32, torch::kFloat32, 1e-5, 40, h_used);
    check_fused_add_rmsnorm(torch::kCPU, torch::kBFloat16, torch::kBFloat16, 1e-2, 40, h_used);
    check_fused_add_rmsnorm(torch::kCPU, torch::kFloat32, torch::kBFloat16, 1e-2, 40, h_used);
  }
}

TEST(FusedOps, CrossEntropyMatchesTorchWithIgnoredTargets) {
  torch::manual_seed(3);
  for (int64_t V : {104, 101})
    for (bool overwrite : {false, true}) {
      SCOPED_TRACE("V " + std::to_string(V) + (overwrite ? ", gradient over the logits" : ""));
      check_fused_cross_entropy(torch::kCPU, torch::kFloat32, 1e-5, V, overwrite);
      check_fused_cross_entropy(torch::kCPU, torch::kBFloat16, 1e-2, V, overwrite);
    }
}

TEST(FusedOps, ChunkedLinearCrossEntropyMatchesTheFullLogits) {
  torch::manual_seed(5);
  check_fused_linear_cross_entropy(torch::kCPU, torch::kFloat32, 1e-5);
  check_fused_linear_cross_entropy(torch::kCPU, torch::kBFloat16, 1e-2);
}

TEST(FusedOps, MixedLinearMatchesLinearOverConcatenatedWeights) {
  torch::manual_seed(7);
  check_mixed_linear(torch::kCPU, /*bf16=*/false, 1e-5, 16, 8);
  check_mixed_linear(torch::kCPU, /*bf16=*/true, 1e-2, 16, 8);  // autocast on the CPU: bf16 products
  auto x = torch::randn({2, 16});
  EXPECT_NE(user_error_of([&] { mixed_linear(x, {torch::randn({8, 16}), torch::randn({8, 15})}); })
                .find("does not take input"),
            std::string::npos);
}

TEST(FusedOps, LlamaLossAndGradientsEqualTheUnfusedModel) {
  check_fused_llama(torch::kCPU, /*bf16=*/false, 1e-5, 1e-5);
  check_fused_llama(torch::kCPU, /*bf16=*/false, 1e-5, 1e-5, /*loss_chunk=*/7);
  // bf16 autocast on the CPU: the dtypes the GPU path sees (bf16 norm outputs, products, logits).
  check_fused_llama(torch::kCPU, /*bf16=*/true, 1e-2, 2e-2);
  check_fused_llama(torch::kCPU, /*bf16=*/true, 1e-2, 2e-2, /*loss_chunk=*/7);
}

TEST(FusedOps, OtherDtypesAreRefusedWithAMessage) {
  auto x = torch::randn({2, 4}, torch::kFloat64);
  EXPECT_FALSE(fused_ops_support(x));
  EXPECT_NE(user_error_of([&] { fused_swiglu(x); }).find("train.fused_kernels"), std::string::npos);
}

}  // namespace cw::test

namespace cw::test {

TEST(WeightCopies, TrainingIsTheSameBitForBitWithAndWithout) { check_weight_copies(torch::kCPU, /*bitwise=*/true); }

}  // namespace cw::test
