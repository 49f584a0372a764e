// GPU tests of the elementwise kernels and the matrix products of the inference engine against their CPU
// references on fresh random inputs (outputs poisoned with NaN first): embedding, RMSNorm, SwiGLU, the one-row
// products with their fused prologues and epilogues (streamed and register kernels), the skinny tensor-core
// product, the backend's tuned products, the CUTLASS products. Runs only where a GPU is present (tools/gpu-run);
// compiled in CI.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <numeric>
#include <string>
#include <vector>

#include "kernels/cuda.h"
#include "kernels/reference.h"
#include "serve/tuned_gemm.h"
#include "tests/gpu/gpu_test_util.h"

using namespace cw;
using namespace cw::test;
namespace kc = cw::kern::cuda;

TEST(GpuKernels, ElementwiseKernelsAndGemvMatchTheirReferences) {
  std::mt19937_64 rng(21);
  const int T = 5, d = 264, V = 300;
  // embedding
  auto table = round_bf16(random_vec(size_t(V) * d, rng));
  std::vector<int32_t> toks = {3, 299, 0, 17, 3};
  std::vector<float> want(size_t(T) * d);
  kern::ref::embedding(table.data(), toks.data(), T, d, want.data());
  Dev<uint16_t> dtab(to_bf16(table));
  Dev<int32_t> dtok(toks);
  Dev<float> dx(size_t(T) * d);
  kc::embedding(dtab.p, dtok.p, T, d, dx.p, nullptr);
  EXPECT_EQ(dx.get(), want);
  // rmsnorm (with a row map) and swiglu at widths of both kernels: float4 pieces (264, 2,048, 4,096) and the
  // plain loop (262: not a multiple of four; 4,100: more than 4,096)
  for (int w_d : {264, 262, 2048, 4096, 4100}) {
    auto x = random_vec(size_t(T) * w_d, rng, 3.f);
    auto w = round_bf16(random_vec(size_t(w_d), rng));
    std::vector<int32_t> map = {4, 0, 2};
    std::vector<float> ref_norm(size_t(3) * w_d);
    kern::ref::rmsnorm(x.data(), map.data(), 3, w_d, w.data(), 1e-5f, ref_norm.data());
    Dev<float> dxx(x);
    Dev<uint16_t> dw(to_bf16(w)), dy(size_t(3) * w_d);
    Dev<int32_t> dmap(map);
    kc::rmsnorm(dxx.p, dmap.p, 3, w_d, dw.p, 1e-5f, dy.p, nullptr);
    EXPECT_LE(rel_err(from_bf16(dy.get()), ref_norm), 1e-2) << "rmsnorm width " << w_d;
    auto gu = random_vec(size_t(T) * 2 * w_d, rng, 2.f);
    std::vector<float> ref_sw(size_t(T) * w_d);
    kern::ref::swiglu(gu.data(), T, w_d, ref_sw.data());
    Dev<float> dgu(gu);
    Dev<uint16_t> dsw(size_t(T) * w_d);
    kc::swiglu(dgu.p, T, w_d, dsw.p, nullptr);
    EXPECT_LE(rel_err(from_bf16(dsw.get()), ref_sw), 1e-2) << "swiglu width " << w_d;
  }
  // gemv, 1..4 rows, with and without the fused residual
  for (int rows = 1; rows <= 4; ++rows)
    for (float beta : {0.f, 1.f}) {
      auto W = round_bf16(random_vec(size_t(V) * d, rng));
      auto xin = round_bf16(random_vec(size_t(rows) * d, rng));
      auto check = product_check(xin, rows, d, W, V, beta, rng);
      Dev<uint16_t> dW(to_bf16(W)), dxin(to_bf16(xin));
      kc::gemv(dW.p, V, d, dxin.p, rows, beta, check.y.p, nullptr);
      EXPECT_LE(rel_err(check.y.get(), check.want), 1e-5) << "rows " << rows << " beta " << beta;
    }
}

TEST(GpuKernels, SkinnyTensorCoreProductMatchesReference) {
  std::mt19937_64 rng(33);
  for (auto [out, in] : std::vector<std::pair<int, int>>{{300, 264}, {2560, 2048}, {64, 5632}, {11264, 2048}})
    for (int T : {1, 5, 8, 9, 16, 33, 64})
      for (float beta : {0.f, 1.f}) {
        auto W = round_bf16(random_vec(size_t(out) * in, rng));
        auto xin = round_bf16(random_vec(size_t(T) * in, rng));
        auto check = product_check(xin, T, in, W, out, beta, rng);
        Dev<uint16_t> dW(to_bf16(W)), dx(to_bf16(xin));
        kc::gemm_skinny(dW.p, out, in, dx.p, T, beta, check.y.p, nullptr);
        auto got = check.y.get();
        for (float v : got) ASSERT_FALSE(std::isnan(v)) << out << "x" << in << " rows " << T << " beta " << beta;
        EXPECT_LE(rel_err(got, check.want), 1e-5) << out << "x" << in << " rows " << T << " beta " << beta;
      }
}

// The backend's tuned products: whichever algorithm timing picked, at the tuned row counts and between them
// (the next tuned count's algorithm, or the default where it does not take that many rows).
TEST(GpuKernels, TunedProductsMatchReference) {
  std::mt19937_64 rng(35);
  cublasHandle_t blas;
  ASSERT_EQ(cublasCreate(&blas), CUBLAS_STATUS_SUCCESS);
  const size_t ws_bytes = size_t(32) << 20;
  Dev<char> ws(ws_bytes);
  serve::TunedGemm gemm(blas, nullptr, ws.p, ws_bytes);
  for (auto [out, in] : std::vector<std::pair<int, int>>{{2560, 2048}, {11264, 2048}, {264, 5632}}) {
    const int T_max = 64;
    auto W = round_bf16(random_vec(size_t(out) * in, rng));
    auto xin = round_bf16(random_vec(size_t(T_max) * in, rng));
    Dev<uint16_t> dW(to_bf16(W)), dx(to_bf16(xin));
    Dev<float> scratch(size_t(T_max) * out);
    for (int T : {16, 64}) gemm.tune(T, out, in, dW.p, dx.p, scratch.p);
    for (int T : {5, 13, 16, 40, 64})
      for (float beta : {0.f, 1.f}) {
        auto check = product_check(xin, T, in, W, out, beta, rng);
        gemm.run(T, out, in, dW.p, dx.p, beta, check.y.p);
        EXPECT_LE(rel_err(check.y.get(), check.want), 1e-5) << out << "x" << in << " rows " << T << " beta " << beta;
      }
  }
  std::cout << gemm.summary() << "\n";
  cublasDestroy(blas);
}

// The CUTLASS products (every configuration the build has) against the reference, on the qkv and down shapes
// of the TinyLlama benchmark model and a narrow one, rows 1 to 200, beta 0 into a poisoned output and 1. Each
// runs right after the RMSNorm that writes its input, both launched with programmatic dependent launch as in a
// step: a product that read x before waiting for that kernel would see the NaN x was poisoned with. Then the
// tuner with the CUTLASS candidates on gives the reference's products, whichever it chose, and so does each
// configuration forced on every product.
TEST(GpuKernels, CutlassProductsMatchReference) {
  if (kc::gemm_cutlass_configs() == 0) GTEST_SKIP() << "built without the CUTLASS headers (pip install nvidia-cutlass)";
  std::mt19937_64 rng(37);
  const size_t ws_bytes = size_t(64) << 20;
  Dev<char> ws(ws_bytes);
  const int T_max = 200;
  std::vector<int32_t> map(T_max);
  std::iota(map.begin(), map.end(), 0);
  Dev<int32_t> dmap(map);
  for (auto [out, in] : std::vector<std::pair<int, int>>{{2560, 2048}, {2048, 5632}, {264, 2048}}) {
    auto W = round_bf16(random_vec(size_t(out) * in, rng));
    auto nw = round_bf16(random_vec(size_t(in), rng));
    Dev<uint16_t> dW(to_bf16(W)), dnw(to_bf16(nw));
    Dev<float> dx(random_vec(size_t(T_max) * in, rng, 3.f));
    for (int c = 0; c < kc::gemm_cutlass_configs(); ++c)
      for (int T : {1, 37, 64, 200})
        for (float beta : {0.f, 1.f}) {
          const std::string where = std::string(kc::gemm_cutlass_name(c)) + " " + std::to_string(out) + "x" +
                                    std::to_string(in) + " rows " + std::to_string(T) + " beta " + std::to_string(beta);
          ASSERT_GE(kc::gemm_cutlass_workspace(c, T, out, in), 0) << where;
          Dev<uint16_t> dxn(size_t(T) * in);  // poisoned until the RMSNorm writes it
          auto y0 = random_vec(size_t(T) * out, rng);
          Dev<float> dy(beta == 0 ? std::vector<float>(y0.size(), NAN) : y0);
          kc::rmsnorm(dx.p, dmap.p, T, in, dnw.p, 1e-5f, dxn.p, nullptr);
          ASSERT_TRUE(kc::gemm_cutlass(c, dW.p, out, in, dxn.p, T, beta, dy.p, ws.p, ws_bytes, nullptr)) << where;
          const auto got = dy.get();
          const auto xn = from_bf16(dxn.get());
          auto want = y0;
          kern::ref::matmul(xn.data(), T, in, W.data(), out, beta, want.data());
          for (float v : got) ASSERT_FALSE(std::isnan(v)) << where;
          EXPECT_LE(rel_err(got, want), 1e-5) << where;
        }
  }
  EXPECT_LT(kc::gemm_cutlass_workspace(0, 16, 2560, 2044), 0) << "a row length off the 16-byte alignment is refused";

  cublasHandle_t blas;
  ASSERT_EQ(cublasCreate(&blas), CUBLAS_STATUS_SUCCESS);
  Dev<char> blas_ws(size_t(32) << 20);
  serve::TunedGemm gemm(blas, nullptr, blas_ws.p, size_t(32) << 20, /*cutlass_candidates=*/true);
  const int out = 2048, in = 5632;
  auto W = round_bf16(random_vec(size_t(out) * in, rng));
  auto xin = round_bf16(random_vec(size_t(128) * in, rng));
  Dev<uint16_t> dW(to_bf16(W)), dx(to_bf16(xin));
  Dev<float> scratch(size_t(128) * out);
  for (int T : {64, 128}) gemm.tune(T, out, in, dW.p, dx.p, scratch.p);
  for (int T : {13, 64, 100, 128}) {
    auto check = product_check(xin, T, in, W, out, 1.f, rng);
    gemm.run(T, out, in, dW.p, dx.p, 1.f, check.y.p);
    EXPECT_LE(rel_err(check.y.get(), check.want), 1e-5) << "tuned with CUTLASS candidates, rows " << T;
  }
  std::cout << gemm.summary() << "\n" << gemm.table_jsonl();
  EXPECT_NE(gemm.table_jsonl().find("\"rows\": 128"), std::string::npos) << "each tuned shape has its line";
  for (int c = 0; c < kc::gemm_cutlass_configs(); ++c) {  // CHUNKWISE_GEMM_CUTLASS_FORCE: no tuning at all
    serve::TunedGemm forced(blas, nullptr, blas_ws.p, size_t(32) << 20, false, c);
    auto check = product_check(xin, 40, in, W, out, 1.f, rng);
    forced.run(40, out, in, dW.p, dx.p, 1.f, check.y.p);
    EXPECT_LE(rel_err(check.y.get(), check.want), 1e-5) << "forced " << kc::gemm_cutlass_name(c);
  }
  cublasDestroy(blas);
}

TEST(GpuKernels, GemvWithNormOrSwigluPrologueEqualsTheComposition) {
  std::mt19937_64 rng(29);
  const int d = 264, out = 300;
  for (int T = 1; T <= 4; ++T) {
    auto x = random_vec(size_t(T) * d, rng, 2.f);
    auto nw = round_bf16(random_vec(size_t(d), rng));
    auto W = round_bf16(random_vec(size_t(out) * d, rng));
    auto gu = random_vec(size_t(T) * 2 * d, rng, 2.f);
    auto y0 = random_vec(size_t(T) * out, rng);
    // References: rmsnorm / swiglu, rounded to bf16 as the GPU stores them, then the product.
    std::vector<float> xn(size_t(T) * d), h(size_t(T) * d), want_norm(size_t(T) * out), want_sw = y0;
    kern::ref::rmsnorm(x.data(), nullptr, T, d, nw.data(), 1e-5f, xn.data());
    xn = round_bf16(xn);
    kern::ref::matmul(xn.data(), T, d, W.data(), out, 0, want_norm.data());
    kern::ref::swiglu(gu.data(), T, d, h.data());
    h = round_bf16(h);
    kern::ref::matmul(h.data(), T, d, W.data(), out, 1, want_sw.data());
    Dev<uint16_t> dW(to_bf16(W)), dnw(to_bf16(nw));
    Dev<float> dx(x), dgu(gu), yn(size_t(T) * out), ys(y0);
    kc::gemv_rmsnorm(dW.p, out, d, dx.p, dnw.p, 1e-5f, T, 0, yn.p, nullptr);
    kc::gemv_swiglu(dW.p, out, d, dgu.p, T, 1, ys.p, nullptr);
    EXPECT_LE(rel_err(yn.get(), want_norm), 1e-3) << "norm prologue, rows " << T;
    EXPECT_LE(rel_err(ys.get(), want_sw), 1e-3) << "swiglu prologue, rows " << T;
  }
}

TEST(GpuKernels, GemvWithRopeAppendOrSwigluEpilogueMatchesTheReferences) {
  std::mt19937_64 rng(31);
  const int d = 264, H = 6, Hkv = 2, hd = 64, nqkv = (H + 2 * Hkv) * hd, ff = 200, page = 16, pages = 8;
  const std::vector<int32_t> pos_all = {0, 17, 300, 1999}, slot_all = {5, 100, 64, 127};
  for (int T = 1; T <= 4; ++T) {
    auto x = random_vec(size_t(T) * d, rng, 2.f);
    auto nw = round_bf16(random_vec(size_t(d), rng));
    auto Wqkv = round_bf16(random_vec(size_t(nqkv) * d, rng));
    auto Wgu = round_bf16(random_vec(size_t(2 * ff) * d, rng));
    const std::vector<int32_t> pos(pos_all.begin(), pos_all.begin() + T), slot(slot_all.begin(), slot_all.begin() + T);
    // References: rmsnorm rounded to bf16 as the GPU stores it, the product, then rope_append / swiglu.
    std::vector<float> xn(size_t(T) * d), want_qkv(size_t(T) * nqkv), gu(size_t(T) * 2 * ff), want_h(size_t(T) * ff);
    kern::ref::rmsnorm(x.data(), nullptr, T, d, nw.data(), 1e-5f, xn.data());
    xn = round_bf16(xn);
    kern::ref::matmul(xn.data(), T, d, Wqkv.data(), nqkv, 0, want_qkv.data());
    std::vector<float> want_k(size_t(pages) * page * Hkv * hd, 0.f), want_v = want_k;
    kern::ref::rope_append(want_qkv.data(), pos.data(), slot.data(), T, H, Hkv, hd, 10000.f, want_k.data(), want_v.data());
    kern::ref::matmul(xn.data(), T, d, Wgu.data(), 2 * ff, 0, gu.data());
    kern::ref::swiglu(gu.data(), T, ff, want_h.data());

    Dev<uint16_t> dWqkv(to_bf16(Wqkv)), dWgu(to_bf16(Wgu)), dnw(to_bf16(nw)), dh(size_t(T) * ff);
    Dev<uint16_t> dk(std::vector<uint16_t>(want_k.size(), 0)), dv(std::vector<uint16_t>(want_k.size(), 0));
    Dev<float> dx(x), dqkv(size_t(T) * nqkv);
    Dev<int32_t> dpos(pos), dslot(slot);
    kc::gemv_rmsnorm_rope_append(dWqkv.p, d, dx.p, dnw.p, 1e-5f, T, dpos.p, dslot.p, H, Hkv, hd, 10000.f, dqkv.p, dk.p,
                                 dv.p, nullptr);
    kc::gemv_rmsnorm_swiglu(dWgu.p, ff, d, dx.p, dnw.p, 1e-5f, T, dh.p, nullptr);
    auto got_qkv = dqkv.get();
    std::vector<float> gq, wq;  // the q columns (k and v go to the caches)
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < H * hd; ++i) gq.push_back(got_qkv[size_t(t) * nqkv + i]), wq.push_back(want_qkv[size_t(t) * nqkv + i]);
    for (float v : gq) ASSERT_FALSE(std::isnan(v)) << "rows " << T;
    EXPECT_LE(rel_err(gq, wq), 1e-3) << "q, rows " << T;
    EXPECT_LE(rel_err(from_bf16(dk.get()), want_k), 1e-2) << "k cache, rows " << T;
    EXPECT_LE(rel_err(from_bf16(dv.get()), want_v), 1e-2) << "v cache, rows " << T;
    EXPECT_LE(rel_err(from_bf16(dh.get()), want_h), 1e-2) << "swiglu, rows " << T;
  }
}

// One-row products through the streamed kernel (weights through a shared-memory ring) and the register kernel,
// on the decode shapes of the TinyLlama benchmark model (several stages per block, units across stages, the
// LM head's 243 units per block), odd sizes, the widest row it takes and one it leaves to the register
// kernel: every epilogue and prologue against the CPU reference, both paths switched explicitly, the streamed
// one with its default ring (200 KB, one block per SM), a 110 KB ring, two blocks of 110 KB per SM, 8 KB
// stages with the producer waiting for x after one, and blocks free to share an SM with an unlimited
// producer; a launch counter says which kernel ran (a shape the streamed kernel silently left to the register one
// would otherwise pass unnoticed).
TEST(GpuKernels, StreamedAndRegisterOneRowProductsMatchTheReferences) {
  std::mt19937_64 rng(37);
  const bool before = kc::gemv_streamed();
  // min_kb / early_kb: set_gemv_stream_start (1 = blocks may share an SM; 100000 = the producer never waits
  // for x; 8 = it waits after its first stage).
  struct Path { bool streamed; int smem_kb, stage_kb, per_sm, min_kb, early_kb; };
  for (Path pa : {Path{true, 0, 0, 0, 0, 0}, Path{true, 110, 0, 0, 0, 0}, Path{true, 110, 0, 2, 0, 0},
                  Path{true, 0, 8, 0, 0, 8}, Path{true, 0, 0, 0, 1, 100000}, Path{false, 0, 0, 0, 0, 0}}) {
    kc::set_gemv_streamed(pa.streamed);
    kc::set_gemv_stream_sizes(pa.smem_kb, pa.stage_kb, pa.per_sm);
    kc::set_gemv_stream_start(pa.min_kb, pa.early_kb);
    const std::string path = !pa.streamed ? "register"
                                          : "streamed, " + std::to_string(pa.smem_kb) + " KB ring, " +
                                                std::to_string(pa.stage_kb) + " KB stages, " + std::to_string(pa.per_sm) +
                                                " per SM, min " + std::to_string(pa.min_kb) + " KB, early " +
                                                std::to_string(pa.early_kb) + " KB (0 = default)";
    // {5000, 8}: 2,048 units per stage, more than a block preloads residual values for (read per unit).
    for (auto [out, in] : std::vector<std::pair<int, int>>{{300, 264}, {2048, 2048}, {2048, 5632}, {32000, 2048}, {7, 8192}, {130, 8200}, {5000, 8}})
      for (float beta : {0.f, 1.f}) {
        auto W = round_bf16(random_vec(size_t(out) * in, rng));
        auto xin = round_bf16(random_vec(size_t(in), rng));
        auto y0 = random_vec(size_t(out), rng);
        auto want = y0;
        kern::ref::matmul(xin.data(), 1, in, W.data(), out, beta, want.data());
        Dev<uint16_t> dW(to_bf16(W)), dx(to_bf16(xin));
        Dev<float> dy(beta == 0 ? std::vector<float>(y0.size(), NAN) : y0);
        const int64_t launches = kc::gemv_streamed_launches();
        kc::gemv(dW.p, out, in, dx.p, 1, beta, dy.p, nullptr);
        // The streamed kernel takes rows of up to 8,192 (kMaxIn); wider ones and the register path never reach it.
        EXPECT_EQ(kc::gemv_streamed_launches() - launches, pa.streamed && in <= 8192 ? 1 : 0)
            << path << " " << out << "x" << in << ": which kernel ran";
        auto got = dy.get();
        for (float v : got) ASSERT_FALSE(std::isnan(v)) << path << " " << out << "x" << in;
        EXPECT_LE(rel_err(got, want), 1e-5) << path << " " << out << "x" << in << " beta " << beta;
      }
    // RMSNorm prologue with the plain, RoPE + KV append and SwiGLU epilogues (TinyLlama: d 2048, 32 / 4 heads).
    const int d = 2048, H = 32, Hkv = 4, hd = 64, nqkv = (H + 2 * Hkv) * hd, ff = 5632, page = 16, pages = 4;
    auto x = random_vec(size_t(d), rng, 2.f);
    auto nw = round_bf16(random_vec(size_t(d), rng));
    auto Wqkv = round_bf16(random_vec(size_t(nqkv) * d, rng));
    auto Wgu = round_bf16(random_vec(size_t(2 * ff) * d, rng));
    const std::vector<int32_t> pos = {301}, slot = {37};
    std::vector<float> xn(size_t(d) * 1), want_qkv(size_t(nqkv) * 1), gu(size_t(2 * ff) * 1), want_h(size_t(ff) * 1);
    kern::ref::rmsnorm(x.data(), nullptr, 1, d, nw.data(), 1e-5f, xn.data());
    xn = round_bf16(xn);
    kern::ref::matmul(xn.data(), 1, d, Wqkv.data(), nqkv, 0, want_qkv.data());
    std::vector<float> plain_want = want_qkv;
    std::vector<float> want_k(size_t(pages) * page * Hkv * hd, 0.f), want_v = want_k;
    kern::ref::rope_append(want_qkv.data(), pos.data(), slot.data(), 1, H, Hkv, hd, 10000.f, want_k.data(), want_v.data());
    kern::ref::matmul(xn.data(), 1, d, Wgu.data(), 2 * ff, 0, gu.data());
    kern::ref::swiglu(gu.data(), 1, ff, want_h.data());
    Dev<uint16_t> dWqkv(to_bf16(Wqkv)), dWgu(to_bf16(Wgu)), dnw(to_bf16(nw)), dh(size_t(ff) * 1);
    Dev<uint16_t> dk(std::vector<uint16_t>(want_k.size(), 0)), dv(std::vector<uint16_t>(want_k.size(), 0));
    Dev<float> dx(x), dqkv(size_t(nqkv) * 1), dplain(size_t(nqkv) * 1);
    Dev<int32_t> dpos(pos), dslot(slot);
    const int64_t launches = kc::gemv_streamed_launches();
    kc::gemv_rmsnorm(dWqkv.p, nqkv, d, dx.p, dnw.p, 1e-5f, 1, 0, dplain.p, nullptr);
    kc::gemv_rmsnorm_rope_append(dWqkv.p, d, dx.p, dnw.p, 1e-5f, 1, dpos.p, dslot.p, H, Hkv, hd, 10000.f, dqkv.p, dk.p,
                                 dv.p, nullptr);
    kc::gemv_rmsnorm_swiglu(dWgu.p, ff, d, dx.p, dnw.p, 1e-5f, 1, dh.p, nullptr);
    EXPECT_EQ(kc::gemv_streamed_launches() - launches, pa.streamed ? 3 : 0) << path << ": which kernel ran (prologues)";
    EXPECT_LE(rel_err(dplain.get(), plain_want), 1e-3) << path << ": norm prologue";
    auto got_qkv = dqkv.get();
    std::vector<float> gq(got_qkv.begin(), got_qkv.begin() + H * hd), wq(want_qkv.begin(), want_qkv.begin() + H * hd);
    for (float v : gq) ASSERT_FALSE(std::isnan(v)) << path;
    EXPECT_LE(rel_err(gq, wq), 1e-3) << path << ": q";
    EXPECT_LE(rel_err(from_bf16(dk.get()), want_k), 1e-2) << path << ": k cache";
    EXPECT_LE(rel_err(from_bf16(dv.get()), want_v), 1e-2) << path << ": v cache";
    auto got_h = from_bf16(dh.get());
    for (float v : got_h) ASSERT_FALSE(std::isnan(v)) << path;
    EXPECT_LE(rel_err(got_h, want_h), 1e-2) << path << ": swiglu";
  }
  kc::set_gemv_streamed(before);
  kc::set_gemv_stream_sizes(0, 0);
  kc::set_gemv_stream_start(0, 0);
}

