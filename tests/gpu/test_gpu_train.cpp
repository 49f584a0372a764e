// GPU test binary of the fused training kernels (kernels/train_ops.h through models/fused_ops.h): each kernel
// against LibTorch's unfused ops on fresh random inputs (fp32 within 1e-5, bf16 within 1e-2), a model with
// fused_kernels on and off under bf16 autocast, the memory the fused cross-entropy saves, and training steps
// replayed from a CUDA graph against the same steps run eagerly.
// Must not: run without a GPU (every test skips when CUDA is absent).
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>

#include <functional>

#include "tests/fused_ops_checks.h"
#include "checkpoints/checkpoint.h"
#include "models/tuned_matmul.h"
#include "tests/test_util.h"
#include "models/lora.h"
#include "train/adamw.h"
#include "train/graphed_step.h"
#include "train/chunkwise_step.h"
#include "train/step_strategy.h"
#include "train/train_step.h"
#include "train/trainer.h"

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
  // 56,000 rows of 512 elements: 3.6M units of 8, more than the grid's threads, which stride over them.
  check_fused_rope_qkv(torch::kCUDA, torch::kBFloat16, 1e-2, 64, /*repeats=*/4000);
}

TEST(GpuFusedOps, SwiGluMatchesSiluTimesUp) {
  SKIP_WITHOUT_GPU();
  torch::manual_seed(2);
  // Items of 8 elements (fp32 at 24, bf16 at 24), 4 (fp32 at 20) and 1 (21; bf16 at 20).
  for (int64_t F : {24, 20, 21}) {
    check_fused_swiglu(torch::kCUDA, torch::kFloat32, 1e-5, F);
    check_fused_swiglu(torch::kCUDA, torch::kBFloat16, 1e-2, F);
  }
  // 80,000 rows of 96: forward items of 16 (bf16) and 8 (fp32), 480,000 and 960,000 of them; the grid strides.
  check_fused_swiglu(torch::kCUDA, torch::kFloat32, 1e-5, 96, /*batch=*/16000);
  check_fused_swiglu(torch::kCUDA, torch::kBFloat16, 1e-2, 96, /*batch=*/16000);
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
  // Forward: a warp per row at 128, 768, 1024 (one, six and eight packs of four per lane), else a block per
  // row. Backward: packs of four at every width but 1102 (one, two and four packs per thread at 1024, 1100,
  // 4096), which takes one element per access. 128 also over 9,000 rows, so warps and blocks stride over rows
  // and the backward pass sums the weight gradient of many blocks.
  for (int64_t d : {40, 128, 768, 1024, 1100, 1102, 4096})
    for (bool h_used : {true, false}) {
      SCOPED_TRACE("d " + std::to_string(d) + (h_used ? ", h read afterwards" : ""));
      check_fused_add_rmsnorm(torch::kCUDA, torch::kFloat32, torch::kFloat32, 1e-5, d, h_used);
      check_fused_add_rmsnorm(torch::kCUDA, torch::kBFloat16, torch::kBFloat16, 1e-2, d, h_used);
      check_fused_add_rmsnorm(torch::kCUDA, torch::kFloat32, torch::kBFloat16, 1e-2, d, h_used);
    }
  SCOPED_TRACE("d 128, 9,000 rows");
  check_fused_add_rmsnorm(torch::kCUDA, torch::kFloat32, torch::kFloat32, 1e-5, 128, true, /*batch=*/1800);
  check_fused_add_rmsnorm(torch::kCUDA, torch::kBFloat16, torch::kBFloat16, 1e-2, 128, false, /*batch=*/1800);
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

TEST(GpuFusedOps, MixedLinearMatchesLinearOverConcatenatedWeights) {
  SKIP_WITHOUT_GPU();
  torch::manual_seed(15);
  const bool tf32 = at::globalContext().allowTF32CuBLAS();
  at::globalContext().setAllowTF32CuBLAS(false);  // fp32 products in fp32 (a trainer test may have turned TF32 on)
  check_mixed_linear(torch::kCUDA, /*bf16=*/false, 1e-5, 64, 128);
  at::globalContext().setAllowTF32CuBLAS(tf32);
  check_mixed_linear(torch::kCUDA, /*bf16=*/true, 1e-2, 64, 128, /*exact_dw=*/true);
  check_mixed_linear(torch::kCUDA, /*bf16=*/true, 1e-2, 1024, 1024, /*exact_dw=*/true);
}

// tuned_mm (models/tuned_matmul.h) against the fp64 product of the same bf16 operands, for the three products of
// a linear layer (forward x w^T, input gradient dy w, weight gradient dy^T x in fp32) at sizes no tile divides,
// a leading dimension cuBLASLt's candidates do not take (at::mm's path), and a tuned shape replayed from a CUDA
// graph with new operands.
TEST(GpuFusedOps, TunedProductsMatchTheFp64Product) {
  SKIP_WITHOUT_GPU();
  torch::manual_seed(17);
  set_tuned_products(true);
  auto shapes_tuned = [] { return std::stoi(tuned_products_summary().substr(std::string("tuned ").size())); };
  const int tuned_before = shapes_tuned();  // other tests may have tuned products (CHUNKWISE_TUNED_PRODUCTS=1)
  auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  auto want = [](const torch::Tensor& a, const torch::Tensor& b) {
    return at::mm(a.to(torch::kFloat64).cpu(), b.to(torch::kFloat64).cpu());
  };
  struct Case {
    int64_t rows, in, out;
  };
  for (const Case c : {Case{1000, 264, 776}, Case{4096, 1024, 3072}, Case{333, 100, 52}}) {
    SCOPED_TRACE("rows " + std::to_string(c.rows) + ", in " + std::to_string(c.in) + ", out " + std::to_string(c.out));
    auto x = torch::randn({c.rows, c.in}, bf16), w = torch::randn({c.out, c.in}, bf16) * 0.1;
    auto dy = torch::randn({c.rows, c.out}, bf16);
    for (int repeat = 0; repeat < 2; ++repeat) {  // the first product of a shape tunes it, the second runs the choice
      auto y = tuned_mm(x, w.t());
      EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
      EXPECT_LE(max_relative_error(y, want(x, w.t())), 1e-2) << "forward";
      EXPECT_LE(max_relative_error(tuned_mm(dy, w), want(dy, w)), 1e-2) << "input gradient";
      auto dw = tuned_mm(dy.t(), x, torch::kFloat32);
      EXPECT_EQ(dw.scalar_type(), torch::kFloat32);
      EXPECT_LE(max_relative_error(dw, want(dy.t(), x)), 1e-5) << "weight gradient (fp32 accumulators)";
    }
  }
  EXPECT_EQ(shapes_tuned(), tuned_before + 6) << tuned_products_summary();  // 333 x 100 x 52 goes to at::mm
  std::cout << tuned_products_summary() << "\n" << tuned_products_summary(/*jsonl=*/true);

  // A tuned shape inside a capture, replayed with new operands; an untuned one captured runs at::mm.
  auto x = torch::randn({1000, 264}, bf16), w = torch::randn({776, 264}, bf16);
  auto x_new = torch::randn({1000, 264}, bf16), w_new = torch::randn({776, 264}, bf16);
  auto odd = torch::randn({48, 64}, bf16);
  c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
  torch::Tensor y, y_odd;
  at::cuda::CUDAGraph graph;
  {
    c10::cuda::CUDAStreamGuard guard(side);
    graph.capture_begin();
    y = tuned_mm(x, w.t());
    y_odd = tuned_mm(odd, odd.t());
    graph.capture_end();
  }
  x.copy_(x_new), w.copy_(w_new);
  graph.replay();
  torch::cuda::synchronize();
  EXPECT_LE(max_relative_error(y, want(x_new, w_new.t())), 1e-2) << "replayed";
  EXPECT_LE(max_relative_error(y_odd, want(odd, odd.t())), 1e-2) << "captured untuned";
  EXPECT_EQ(shapes_tuned(), tuned_before + 6) << "a shape was tuned inside the capture";
  set_tuned_products(false);
}

// The bf16 weight copies (models/weight_copies.h) written by the AdamW kernel: training with them equals training
// without (to rounding: cuDNN's attention backward is not deterministic), and every copy equals its weight's cast.
TEST(GpuFusedOps, WeightCopiesFollowTheWeights) {
  SKIP_WITHOUT_GPU();
  check_weight_copies(torch::kCUDA, /*bitwise=*/false);
}

// The multi-tensor AdamW kernel (kernels/adamw) against the per-parameter loop on the CPU: sizes with a tail
// past the 4-element accesses, a gradient 4 bytes off 16-byte alignment (the element path), a skipped step and
// steps whose gradients are divided (clipping).
TEST(GpuFusedOps, AdamWKernelMatchesTheLoop) {
  SKIP_WITHOUT_GPU();
  torch::manual_seed(16);
  const std::vector<std::vector<int64_t>> shapes = {{1000003}, {7, 5}, {1024, 64}, {3}};
  std::vector<std::pair<std::string, torch::Tensor>> gpu, cpu;
  std::vector<bool> decay;
  for (size_t i = 0; i < shapes.size(); ++i) {
    auto w = torch::randn(shapes[i]);
    gpu.emplace_back("w" + std::to_string(i), w.cuda().requires_grad_(true));
    cpu.emplace_back("w" + std::to_string(i), w.clone().requires_grad_(true));
    decay.push_back(i % 2 == 0);
  }
  AdamW fused(gpu, decay, {0.9, 0.95, 1e-8, 0.1, true}), loop(cpu, decay, {0.9, 0.95, 1e-8, 0.1, false});
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  for (int step = 0; step < 6; ++step) {
    for (size_t i = 0; i < shapes.size(); ++i) {
      auto g = torch::randn(shapes[i]) * 3;
      cpu[i].second.mutable_grad() = g.clone();
      if (i == 2) {  // a contiguous view 4 bytes past a 16-byte boundary
        auto buf = torch::empty({g.numel() + 1}, f32.device(torch::kCUDA));
        auto view = buf.narrow(0, 1, g.numel()).view(shapes[i]);
        view.copy_(g);
        gpu[i].second.mutable_grad() = view;
      } else {
        gpu[i].second.mutable_grad() = g.cuda();
      }
    }
    const float skip = step == 3 ? 1.f : 0.f, divisor = step % 2 ? 2.5f : 1.f;
    const float lr = 1e-2f * float(step + 1);
    fused.step(torch::full({1}, lr, f32.device(torch::kCUDA)), torch::full({1}, skip, f32.device(torch::kCUDA)),
               torch::full({1}, divisor, f32.device(torch::kCUDA)));
    loop.step(torch::full({1}, lr, f32), torch::full({1}, skip, f32), torch::full({1}, divisor, f32));
  }
  EXPECT_EQ(fused.steps(), 5);
  for (size_t i = 0; i < shapes.size(); ++i) {
    SCOPED_TRACE("tensor " + std::to_string(i));
    // Relative to each tensor's largest value: where 0.9 m and 0.1 g nearly cancel, the kernel's fused
    // multiply-adds leave an absolute difference of a few ulps of the terms, not of the small result.
    EXPECT_LE(max_relative_error(gpu[i].second, cpu[i].second), 1e-5) << "weight";
    EXPECT_LE(max_relative_error(fused.slots()[i].exp_avg, loop.slots()[i].exp_avg), 1e-5) << "exp_avg";
    EXPECT_LE(max_relative_error(fused.slots()[i].exp_avg_sq, loop.slots()[i].exp_avg_sq), 1e-5) << "exp_avg_sq";
    EXPECT_FALSE(gpu[i].second.detach().isnan().any().item<bool>());
  }
}

TEST(GpuFusedOps, LlamaLossAndGradientsEqualTheUnfusedModel) {
  SKIP_WITHOUT_GPU();
  check_fused_llama(torch::kCUDA, /*bf16=*/false, 1e-5, 1e-4);  // TF32 is off in this binary: fp32 products
  check_fused_llama(torch::kCUDA, /*bf16=*/true, 1e-2, 2e-2);
  check_fused_llama(torch::kCUDA, /*bf16=*/true, 1e-2, 2e-2, /*loss_chunk=*/7);
}

// The three tests below: a small Llama on CUDA (seeded) and a random batch of ROWS x T tokens for it.
static std::shared_ptr<Llama> small_cuda_llama(ModelConfig c, uint64_t seed) {
  c.vocab_size = 96, c.d_model = 64, c.n_heads = 4, c.n_kv_heads = 2, c.d_ff = 96;
  torch::manual_seed(seed);
  return std::make_shared<Llama>(c);
}
static Batch random_cuda_batch(int64_t rows, int64_t T) {
  auto iopts = torch::TensorOptions().dtype(torch::kInt64).device(torch::kCUDA);
  Batch b;
  b.tokens = torch::randint(0, 96, {rows, T}, iopts);
  b.targets = torch::randint(0, 96, {rows, T}, iopts);
  b.positions = torch::arange(T, iopts).unsqueeze(0).repeat({rows, 1});
  b.n_target_tokens = rows * T;
  return b;
}

// SeCO on CUDA (fused kernels, bf16 autocast and fp32) gives the standard step's loss and gradients, with
// packed documents and a ragged last chunk; SpaCO with a budget of every chunk is SeCO bit for bit there too.
TEST(GpuChunkwise, SecoWithFusedKernelsMatchesTheStandardStep) {
  SKIP_WITHOUT_GPU();
  ModelConfig c;
  c.n_layers = 2, c.max_seq_len = 80;
  auto model = small_cuda_llama(c, 11);
  model->to(torch::kCUDA);
  model->fused_kernels = true;
  auto iopts = torch::TensorOptions().dtype(torch::kInt64).device(torch::kCUDA);
  Batch b = random_cuda_batch(2, 80);
  b.segments = torch::zeros({2, 80}, iopts.dtype(torch::kInt32));
  b.segments.index_put_({1, torch::indexing::Slice(30, 80)}, 1);
  b.positions.index_put_({1, torch::indexing::Slice(30, 80)}, torch::arange(50, iopts));
  b.has_segments = true;
  auto grads_of = [&](StepStrategy& s, const std::string& precision, double* loss) {
    model->zero_grad();
    *loss = run_under_autocast(s, *model, {b}, StepContext{}, torch::Device(torch::kCUDA), precision).loss;
    std::vector<torch::Tensor> g;
    for (auto& p : model->parameters()) g.push_back(p.grad().clone());
    return g;
  };
  for (const std::string precision : {"fp32", "bf16"}) {
    const double tol = precision == "bf16" ? 2e-2 : 1e-4;
    StandardStep standard;
    ChunkwiseStep seco({24, 0, 0}), spaco({24, 4, 0});  // 4 chunks, the last of 8 tokens
    double want_loss, seco_loss, spaco_loss;
    auto want = grads_of(standard, precision, &want_loss);
    auto got = grads_of(seco, precision, &seco_loss);
    auto same = grads_of(spaco, precision, &spaco_loss);
    EXPECT_NEAR(seco_loss, want_loss, tol * want_loss) << precision;
    EXPECT_EQ(spaco_loss, seco_loss) << precision;
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_LE(norm_relative_error(got[i], want[i]), tol) << precision << " parameter " << i;
      EXPECT_TRUE(torch::equal(same[i], got[i])) << precision << " parameter " << i;
      EXPECT_FALSE(got[i].isnan().any().item<bool>());
    }
  }
}

// LoRA adapters on every projection under bf16 autocast: the fused path's loss equals the unfused ops', its
// adapter gradients are as close to fp32's as the unfused ops' are, and bit for bit the same with the frozen
// projections kept in bf16.
TEST(GpuLora, FusedKernelsMatchTheUnfusedOpsWithAdapters) {
  SKIP_WITHOUT_GPU();
  ModelConfig c;
  c.n_layers = 2, c.max_seq_len = 32;
  c.lora_rank = 8, c.lora_targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  auto model = small_cuda_llama(c, 12);
  {
    torch::NoGradGuard ng;
    for (auto& p : model->named_parameters())
      if (is_lora_parameter(p.key())) p.value().normal_(0.0, 0.1);
      else p.value().requires_grad_(false);
  }
  model->to(torch::kCUDA);
  Batch b = random_cuda_batch(2, 32);
  auto run = [&](bool fused, double* loss, const char* precision = "bf16") {
    model->fused_kernels = fused;
    model->zero_grad();
    StandardStep step;
    *loss = run_under_autocast(step, *model, {b}, StepContext{}, torch::Device(torch::kCUDA), precision).loss;
    std::vector<torch::Tensor> g;
    for (auto& p : model->parameters())
      if (p.requires_grad()) g.push_back(p.grad().clone());
    return g;
  };
  // Both bf16 runs are measured against the unfused ops in fp32: bf16's own rounding moves some adapter
  // gradients by about 2% either way, so the fused kernels may differ from the unfused ones by that much
  // without an error. An error of their own (a missing scale, a transposed product) shows as a distance from
  // fp32 far beyond the unfused ops' own.
  double fused_loss, plain_loss, fp32_loss;
  auto exact = run(false, &fp32_loss, "fp32");
  auto got = run(true, &fused_loss), want = run(false, &plain_loss);
  ASSERT_EQ(got.size(), 28u);
  EXPECT_NEAR(fused_loss, plain_loss, 1e-2 * plain_loss);
  for (size_t i = 0; i < got.size(); ++i) {
    double fused_error = norm_relative_error(got[i], exact[i]), plain_error = norm_relative_error(want[i], exact[i]);
    std::printf("adapter %2zu: fused %.4f, unfused %.4f from fp32\n", i, fused_error, plain_error);
    EXPECT_LE(fused_error, 2 * plain_error + 5e-3) << "adapter " << i;
  }
  // The frozen projections kept in bf16 (lora.base_dtype): the products read the same bf16 values.
  keep_frozen_projections_in(*model, torch::kBFloat16);
  double bf16_loss;
  auto same = run(true, &bf16_loss);
  EXPECT_EQ(bf16_loss, fused_loss);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(torch::equal(same[i], got[i])) << "adapter " << i;
}

// Activation checkpointing on CUDA under bf16 autocast with fused kernels: the recompute runs on the autograd
// engine's device thread, under the first pass's autocast; loss and gradients match keeping the activations.
TEST(GpuCheckpointLayers, RecomputedLayersMatchKeptActivations) {
  SKIP_WITHOUT_GPU();
  ModelConfig c;
  c.n_layers = 3, c.max_seq_len = 32;
  auto model = small_cuda_llama(c, 13);
  model->to(torch::kCUDA);
  model->fused_kernels = true;
  Batch b = random_cuda_batch(2, 32);
  auto run = [&](bool checkpoint, double* loss) {
    model->checkpoint_layers = checkpoint;
    model->zero_grad();
    StandardStep step;
    *loss = run_under_autocast(step, *model, {b}, StepContext{}, torch::Device(torch::kCUDA), "bf16").loss;
    std::vector<torch::Tensor> g;
    for (auto& p : model->parameters()) g.push_back(p.grad().clone());
    return g;
  };
  double with_loss, without_loss;
  auto got = run(true, &with_loss), want = run(false, &without_loss);
  EXPECT_NEAR(with_loss, without_loss, 1e-2 * without_loss);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_LE(norm_relative_error(got[i], want[i]), 2e-2) << "parameter " << i;
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

// A chunk after earlier keys (SeCO's bottom-right causal mask) through flash attention's kernel equals the
// softmax reference with the explicit mask, with grouped-query heads and chunks of several lengths.
TEST(GpuFusedOps, ChunkAfterEarlierKeysThroughFlashEqualsTheReference) {
  SKIP_WITHOUT_GPU();
  torch::manual_seed(21);
  auto opts = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  for (auto [Tq, Tk] : {std::pair<int64_t, int64_t>{16, 48}, {64, 64 + 192}, {1, 33}, {100, 357}}) {
    auto q = torch::randn({2, 8, Tq, 64}, opts).requires_grad_(true);
    auto k = torch::randn({2, 2, Tk, 64}, opts).requires_grad_(true);
    auto v = torch::randn({2, 2, Tk, 64}, opts).requires_grad_(true);
    AttnMask m;  // q_offset -1: bottom-right
    const int64_t before = chunk_flash_calls();
    expect_attention_matches_reference(q, k, v, m, [&] { return attend(q, k, v, m); });
    EXPECT_EQ(chunk_flash_calls(), before + 1) << Tq << " queries after " << Tk - Tq << " keys";
  }
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

// train.attention = flash | cudnn: each puts its kernel first, the pick follows (also when set before any
// attention ran: LibTorch settles its own order on its first dispatch), and both equal the softmax reference,
// forward and gradients; auto restores LibTorch's own pick.
TEST(GpuFusedOps, ChosenAttentionBackendEqualsTheReference) {
  SKIP_WITHOUT_GPU();
  torch::manual_seed(7);
  auto opts = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
  const int64_t B = 2, H = 4, T = 256, D = 64;
  auto make = [&] { return torch::randn({B, T, H, D}, opts).transpose(1, 2).requires_grad_(true); };
  auto q = make(), k = make(), v = make();
  AttnMask m;
  m.q_offset = 0;
  std::string libtorch_pick;
  for (std::string backend : {"flash", "cudnn"}) {  // "flash" first: set before this process's first dispatch
    SCOPED_TRACE(backend);
    set_attention_backend(backend);
    EXPECT_EQ(attention_backend_for(q, k, v), backend);
    expect_attention_matches_reference(q, k, v, m, [&] {
      auto out = attend(q, k, v, m);
      set_attention_backend("auto");  // the backward pass runs the kernels the forward pass picked
      return out;
    });
    if (libtorch_pick.empty()) libtorch_pick = attention_backend_for(q, k, v);
    EXPECT_EQ(attention_backend_for(q, k, v), libtorch_pick);
  }
  EXPECT_TRUE(libtorch_pick == "flash" || libtorch_pick == "cudnn") << libtorch_pick;
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

// Eight training steps of a small Llama (fused kernels, clipping, AdamW with a changing learning rate, one
// step with a non-finite loss that must be skipped), eagerly and through GraphedStep (3 eager steps, then the
// capture and replays with new batches): the same losses, gradient norms, weights and step count.
TEST(GpuFusedSteps, CudaGraphReplaysTheEagerSteps) {
  SKIP_WITHOUT_GPU();
  for (bool bf16 : {false, true}) {
    SCOPED_TRACE(bf16 ? "bf16 autocast" : "fp32");
    const torch::Device device(torch::kCUDA, 0);
    const std::string precision = bf16 ? "bf16" : "fp32";
    ModelConfig c;
    c.vocab_size = 128, c.d_model = 64, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.d_ff = 96;
    c.max_seq_len = 32;
    auto iopts = torch::TensorOptions().dtype(torch::kInt64).device(device);
    torch::manual_seed(11);
    std::vector<Batch> data;
    for (int i = 0; i < 8; ++i) {
      Batch b;
      b.tokens = torch::randint(0, c.vocab_size, {2, 32}, iopts);
      b.targets = torch::randint(0, c.vocab_size, {2, 32}, iopts);
      b.targets.index_put_({0, torch::indexing::Slice(0, i)}, kIgnoreIndex);  // the normaliser changes per step
      b.positions = torch::arange(32, iopts).unsqueeze(0).expand({2, 32}).contiguous();
      b.n_target_tokens = (b.targets != kIgnoreIndex).sum().item<int64_t>();
      data.push_back(b);
    }
    struct Run {
      std::vector<double> losses, norms;
      std::vector<torch::Tensor> weights;
      int64_t steps;
    };
    auto train = [&](bool graphed_run) {
      CaptureStreamScope stream_scope(device);
      torch::manual_seed(12);
      auto model = std::make_shared<Llama>(c);
      model->to(device);
      model->fused_kernels = true;
      std::vector<std::pair<std::string, torch::Tensor>> params;
      std::vector<bool> decay;
      for (auto& p : model->named_parameters()) params.emplace_back(p.key(), p.value()), decay.push_back(p.value().dim() > 1);
      AdamW opt(params, decay, {0.9, 0.95, 1e-8, 0.1, true});
      std::vector<torch::Tensor> ps;
      for (auto& [n, p] : params) ps.push_back(p);
      StandardStep strategy;
      auto body = [&](const std::vector<Batch>& mb, const torch::Tensor& lr, const torch::Tensor& normaliser) {
        return deferred_step(strategy, *model, mb, lr, normaliser, ps, 0.5, opt, device, precision);
      };
      GraphedStep graphed(body, [&] { opt.zero_grad(); }, device, 3);
      auto lr_t = torch::zeros({1}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
      Run run;
      for (int i = 0; i < 8; ++i) {
        const double lr = 1e-3 * (1 + i % 3);
        const int64_t normaliser = i == 5 ? 0 : data[i].n_target_tokens;  // step 6: loss / 0, not finite
        StepTensors out;
        if (graphed_run) {
          out = graphed.run({data[i]}, lr, normaliser);
        } else {
          opt.zero_grad();
          lr_t.fill_(lr);
          auto n = torch::full({1}, double(normaliser), lr_t.options());
          out = body({data[i]}, lr_t, n);
        }
        run.losses.push_back(out.loss.item<double>());
        run.norms.push_back(out.grad_norm.item<double>());
      }
      EXPECT_EQ(graphed.captured(), graphed_run);
      for (auto& [n, p] : params) run.weights.push_back(p.detach().clone());
      run.steps = opt.steps();
      return run;
    };
    Run eager = train(false), graphed = train(true);
    EXPECT_EQ(eager.steps, 7);  // step 6 skipped
    EXPECT_EQ(graphed.steps, 7);
    EXPECT_FALSE(std::isfinite(graphed.losses[5]));
    const double tol = bf16 ? 1e-2 : 1e-5;
    for (int i = 0; i < 8; ++i) {
      if (i == 5) continue;
      EXPECT_NEAR(graphed.losses[i], eager.losses[i], tol * std::abs(eager.losses[i])) << "step " << i + 1;
      EXPECT_NEAR(graphed.norms[i], eager.norms[i], tol * std::abs(eager.norms[i]) + 1e-7) << "step " << i + 1;
    }
    for (size_t k = 0; k < eager.weights.size(); ++k)
      EXPECT_LE(max_relative_error(graphed.weights[k], eager.weights[k]), tol) << "parameter " << k;
  }
}

// The trainer on CUDA with train.cuda_graph on and off (steps 4..12 replayed from the graph): the same loss at
// every step; and a graphed run stopped after step 7 and resumed (eager again for 3 steps, then a new
// capture) ends with the weights, moments and step count of the uninterrupted graphed run.
TEST(GpuFusedTraining, GraphedTrainerMatchesEagerAndResumes) {
  SKIP_WITHOUT_GPU();
  auto out = scratch_dir("gpu-graphed-trainer");
  std::ostringstream log;
  TrainOptions o;
  o.out = &log;
  auto recipe = [&](const std::string& name, const std::string& graph) {
    Recipe r = tiny_recipe(out, name, 12);
    r.set("run.device", "cuda");
    r.set("run.precision", "fp32");
    r.set("train.cuda_graph", graph);
    return r;
  };
  TrainResult eager = train(recipe("eager", "false"), o);
  TrainResult graphed = train(recipe("graphed", "true"), o);
  ASSERT_EQ(graphed.losses.size(), eager.losses.size()) << log.str();
  for (size_t i = 0; i < eager.losses.size(); ++i)
    EXPECT_NEAR(graphed.losses[i], eager.losses[i], 1e-5 * std::abs(eager.losses[i])) << "step " << i + 1;
  EXPECT_NEAR(graphed.val_loss, eager.val_loss, 1e-5 * eager.val_loss);

  Recipe crashy = recipe("crashy", "true");
  o.stop_at = 7;  // checkpoints every 3 steps: resumes at step 7
  train(crashy, o);
  o.stop_at = 0;
  o.resume = true;
  TrainResult resumed = train(crashy, o);
  EXPECT_EQ(resumed.first_step, 7);
  auto a = load_checkpoint(*latest_checkpoint(graphed.run_dir)), b = load_checkpoint(*latest_checkpoint(resumed.run_dir));
  EXPECT_EQ(a.step, 12);
  EXPECT_EQ(b.step, 12);
  EXPECT_EQ(a.state_json, b.state_json);  // optimizer step count, tokens seen, sampler position
  for (auto& [name, t] : a.model) EXPECT_LE(max_relative_error(b.model.at(name), t), 1e-5) << name;
  for (auto& [name, t] : a.optimizer) EXPECT_LE(max_relative_error(b.optimizer.at(name), t), 1e-5) << name;
}

}  // namespace cw::test
