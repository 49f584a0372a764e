// The GPU test binary of the inference engine: every CUDA kernel against its CPU reference on fresh random
// inputs (outputs poisoned with NaN first), then the CUDA backend against the CPU backend end to end, and
// greedy generations that agree across token budgets, CUDA graphs and prefix sharing (except at near-ties).
// Runs only where a GPU is present (tools/gpu-run); compiled in CI.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <map>
#include <numeric>

#include "kernels/cuda.h"
#include "kernels/reference.h"
#include "serve/cpu_backend.h"
#include "serve/cpu_model.h"
#include "serve/cuda_backend.h"
#include "serve/engine.h"
#include "serve/tuned_gemm.h"
#include "tests/serve_test_util.h"

using namespace cw;
using namespace cw::test;
namespace kc = cw::kern::cuda;

namespace {

template <typename T>
struct Dev {  // a device copy of a host vector, poisoned (all bits set = NaN) when created empty
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(const std::vector<T>& h) : n(h.size()) {
    EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess);
    cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice);
  }
  explicit Dev(size_t count) : n(count) {
    EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess);
    cudaMemset(p, 0xff, n * sizeof(T));
  }
  ~Dev() { cudaFree(p); }
  std::vector<T> get() const {
    std::vector<T> h(n);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
  }
};

std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = kern::float_to_bf16(v[i]);
  return o;
}
std::vector<float> from_bf16(const std::vector<uint16_t>& v) {
  std::vector<float> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = kern::bf16_to_float(v[i]);
  return o;
}
std::vector<float> round_bf16(const std::vector<float>& v) { return from_bf16(to_bf16(v)); }
// A random model whose weights are exactly representable in bf16, so CPU (fp32) and CUDA (bf16) hold the same.
serve::Bundle bf16_bundle(const ModelConfig& c, uint64_t seed) {
  serve::Bundle b = serve::random_bundle(c, seed, 0.1f);
  for (auto& [name, w] : b.weights) w.data = round_bf16(w.data);
  return b;
}
// Page numbers 0..n_pages in random order: block tables that are not in cache order.
// One spare page (n_pages + 1 entries) so that the tables also skip a page.
std::vector<int32_t> shuffled_pages(int n_pages, std::mt19937_64& rng) {
  std::vector<int32_t> perm(static_cast<size_t>(n_pages + 1));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  return perm;
}

}  // namespace

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
      auto y0 = random_vec(size_t(rows) * V, rng);
      auto ref_y = y0;
      kern::ref::matmul(xin.data(), rows, d, W.data(), V, beta, ref_y.data());
      Dev<uint16_t> dW(to_bf16(W)), dxin(to_bf16(xin));
      Dev<float> dyv(beta == 0 ? std::vector<float>(y0.size(), NAN) : y0);
      kc::gemv(dW.p, V, d, dxin.p, rows, beta, dyv.p, nullptr);
      EXPECT_LE(rel_err(dyv.get(), ref_y), 1e-5) << "rows " << rows << " beta " << beta;
    }
}

TEST(GpuKernels, SkinnyTensorCoreProductMatchesReference) {
  std::mt19937_64 rng(33);
  for (auto [out, in] : std::vector<std::pair<int, int>>{{300, 264}, {2560, 2048}, {64, 5632}, {11264, 2048}})
    for (int T : {1, 5, 8, 9, 16, 33, 64})
      for (float beta : {0.f, 1.f}) {
        auto W = round_bf16(random_vec(size_t(out) * in, rng));
        auto xin = round_bf16(random_vec(size_t(T) * in, rng));
        auto y0 = random_vec(size_t(T) * out, rng);
        auto want = y0;
        kern::ref::matmul(xin.data(), T, in, W.data(), out, beta, want.data());
        Dev<uint16_t> dW(to_bf16(W)), dx(to_bf16(xin));
        Dev<float> dy(beta == 0 ? std::vector<float>(y0.size(), NAN) : y0);
        kc::gemm_skinny(dW.p, out, in, dx.p, T, beta, dy.p, nullptr);
        auto got = dy.get();
        for (float v : got) ASSERT_FALSE(std::isnan(v)) << out << "x" << in << " rows " << T << " beta " << beta;
        EXPECT_LE(rel_err(got, want), 1e-5) << out << "x" << in << " rows " << T << " beta " << beta;
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
        auto y0 = random_vec(size_t(T) * out, rng);
        auto want = y0;
        kern::ref::matmul(xin.data(), T, in, W.data(), out, beta, want.data());
        Dev<float> dy(beta == 0 ? std::vector<float>(y0.size(), NAN) : y0);
        gemm.run(T, out, in, dW.p, dx.p, beta, dy.p);
        EXPECT_LE(rel_err(dy.get(), want), 1e-5) << out << "x" << in << " rows " << T << " beta " << beta;
      }
  }
  std::cout << gemm.summary() << "\n";
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

TEST(GpuKernels, RopeAppendMatchesReference) {
  std::mt19937_64 rng(22);
  const int T = 6, H = 8, Hkv = 2, hd = 64, page = 16, pages = 8;
  auto qkv = random_vec(size_t(T) * (H + 2 * Hkv) * hd, rng);
  std::vector<int32_t> pos = {0, 1, 17, 300, 1999, 5}, slot = {5, 100, 7, 64, 127, 30};
  auto ref_qkv = qkv;
  std::vector<float> kc_ref(size_t(pages) * page * Hkv * hd, 0.f), vc_ref = kc_ref;
  kern::ref::rope_append(ref_qkv.data(), pos.data(), slot.data(), T, H, Hkv, hd, 10000.f, kc_ref.data(), vc_ref.data());
  Dev<float> dqkv(qkv);
  Dev<int32_t> dpos(pos), dslot(slot);
  Dev<uint16_t> dk(std::vector<uint16_t>(kc_ref.size(), 0)), dv(std::vector<uint16_t>(kc_ref.size(), 0));
  kc::rope_append(dqkv.p, dpos.p, dslot.p, T, H, Hkv, hd, 10000.f, dk.p, dv.p, nullptr);
  auto got = dqkv.get();
  std::vector<float> gq, wq;
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < H * hd; ++i) gq.push_back(got[size_t(t) * (H + 2 * Hkv) * hd + i]), wq.push_back(ref_qkv[size_t(t) * (H + 2 * Hkv) * hd + i]);
  EXPECT_LE(rel_err(gq, wq), 1e-5);
  EXPECT_LE(rel_err(from_bf16(dk.get()), kc_ref), 1e-2);
  EXPECT_LE(rel_err(from_bf16(dv.get()), vc_ref), 1e-2);
}

TEST(GpuKernels, PagedAttentionAndCascadeMergeMatchReference) {
  std::mt19937_64 rng(23);
  for (auto [H, Hkv] : std::vector<std::pair<int, int>>{{4, 4}, {4, 2}, {8, 1}, {32, 4}})
    for (int hd : {64, 128})
      for (int page : {1, 16})
        for (int len : {1, page > 1 ? page - 1 : 2, page, page + 1, 300}) {
          const int n_pages = (len + page - 1) / page + 2;
          auto k = round_bf16(random_vec(size_t(n_pages) * page * Hkv * hd, rng));
          auto v = round_bf16(random_vec(size_t(n_pages) * page * Hkv * hd, rng));
          std::vector<int32_t> all(static_cast<size_t>(n_pages));
          std::iota(all.begin(), all.end(), 0);
          std::shuffle(all.begin(), all.end(), rng);
          std::vector<int32_t> pages(all.begin(), all.begin() + (len + page - 1) / page);
          // Two levels: item "prefix" = the first half of the pages for all rows; suffix per item.
          const int chunk = std::min(5, len), rows = 1 + chunk;
          std::vector<int32_t> pos = {len - 1};
          for (int i = 0; i < chunk; ++i) pos.push_back(len - chunk + i);
          const int pre_pages = int(pages.size()) / 2, pre = std::min(len, pre_pages * page);
          std::vector<int32_t> q_ind0 = {0, rows}, kv_ind0 = {0, pre_pages}, kv_len0 = {pre}, kv_pos00 = {0};
          std::vector<int32_t> pages0(pages.begin(), pages.begin() + pre_pages);
          std::vector<int32_t> q_ind1 = {0, 1, rows}, kv_ind1 = {0, int(pages.size()) - pre_pages, 2 * (int(pages.size()) - pre_pages)};
          std::vector<int32_t> pages1(pages.begin() + pre_pages, pages.end());
          pages1.insert(pages1.end(), pages.begin() + pre_pages, pages.end());
          std::vector<int32_t> kv_len1 = {len - pre, len - pre}, kv_pos01 = {pre, pre};
          auto q = random_vec(size_t(rows) * H * hd, rng);
          kern::AttnShape S;
          S.rows = rows, S.heads = H, S.kv_heads = Hkv, S.head_dim = hd, S.page_size = page, S.q_stride = H * hd;
          S.scale = float(1 / std::sqrt(double(hd)));
          auto host_level = [](auto& qi, auto& ki, auto& pg, auto& kl, auto& kp) {
            kern::AttnLevel L;
            L.num_items = int(kl.size()), L.q_indptr = qi.data(), L.kv_indptr = ki.data(), L.kv_pages = pg.data();
            L.kv_len = kl.data(), L.kv_pos0 = kp.data();
            return L;
          };
          for (int splits : {1, 2, 7}) {
            const int slots = 2 * splits;
            std::vector<float> o_part(size_t(slots) * rows * H * hd), lse_part(size_t(slots) * rows * H);
            kern::ref::paged_attention(q.data(), pos.data(), host_level(q_ind0, kv_ind0, pages0, kv_len0, kv_pos00), S,
                                       k.data(), v.data(), splits, 0, o_part.data(), lse_part.data());
            kern::ref::paged_attention(q.data(), pos.data(), host_level(q_ind1, kv_ind1, pages1, kv_len1, kv_pos01), S,
                                       k.data(), v.data(), splits, splits, o_part.data(), lse_part.data());
            std::vector<float> want(size_t(rows) * H * hd), want_lse(size_t(rows) * H);
            kern::ref::merge_states(o_part.data(), lse_part.data(), slots, rows, H, hd, want.data(), want_lse.data());

            Dev<float> dq(q), dop(o_part.size()), dlp(lse_part.size()), dout(want.size()), dlse(want_lse.size());
            Dev<uint16_t> dk(to_bf16(k)), dv(to_bf16(v));
            Dev<int32_t> dpos(pos), a0(q_ind0), b0(kv_ind0), c0(pages0), e0(kv_len0), f0(kv_pos00);
            Dev<int32_t> a1(q_ind1), b1(kv_ind1), c1(pages1), e1(kv_len1), f1(kv_pos01);
            const int rpt = kern::attention_rows_per_tile(H, Hkv);
            std::vector<int32_t> ti0, tr0, ti1, tr1;
            kc::attention_tiles(q_ind0, rpt, ti0, tr0);
            kc::attention_tiles(q_ind1, rpt, ti1, tr1);
            Dev<int32_t> dti0(ti0), dtr0(tr0), dti1(ti1), dtr1(tr1);
            auto dev_level = [](int items, auto& qi, auto& ki, auto& pg, auto& kl, auto& kp) {
              kern::AttnLevel L;
              L.num_items = items, L.q_indptr = qi.p, L.kv_indptr = ki.p, L.kv_pages = pg.p, L.kv_len = kl.p, L.kv_pos0 = kp.p;
              return L;
            };
            // Level 1 also merges in its last blocks (fused); merge_states afterwards gives fp32 and the lse.
            Dev<int32_t> counters(std::vector<int32_t>(ti1.size() * size_t(Hkv), 0));
            Dev<uint16_t> fused(want.size());
            kc::AttnMerge merge;
            merge.slots = slots, merge.out = fused.p, merge.counters = counters.p;
            kc::paged_attention(dq.p, dpos.p, dev_level(1, a0, b0, c0, e0, f0), dti0.p, dtr0.p, int(ti0.size()), rpt, S, dk.p,
                                dv.p, splits, 0, dop.p, dlp.p, kc::AttnMerge{}, nullptr);
            kc::paged_attention(dq.p, dpos.p, dev_level(2, a1, b1, c1, e1, f1), dti1.p, dtr1.p, int(ti1.size()), rpt, S, dk.p,
                                dv.p, splits, splits, dop.p, dlp.p, merge, nullptr);
            kc::merge_states(dop.p, dlp.p, slots, rows, H, hd, nullptr, dout.p, dlse.p, nullptr);
            ASSERT_LE(rel_err(from_bf16(fused.get()), want), 1e-2) << "fused merge";
            for (int32_t c : counters.get()) ASSERT_EQ(c, 0) << "counters are left at zero";
            const std::string where = "H " + std::to_string(H) + "/" + std::to_string(Hkv) + " hd " + std::to_string(hd) +
                                      " page " + std::to_string(page) + " len " + std::to_string(len) + " splits " + std::to_string(splits);
            ASSERT_LE(rel_err(dout.get(), want), 1e-5) << where;
            ASSERT_LE(rel_err(dlse.get(), want_lse), 1e-5) << where;
          }
        }
}

TEST(GpuKernels, DecodeAttentionWithFusedMergeMatchesReference) {
  std::mt19937_64 rng(28);
  for (auto [H, Hkv, hd] : std::vector<std::tuple<int, int, int>>{{32, 4, 64}, {8, 8, 64}, {16, 1, 128}, {12, 4, 128}}) {
  const int page = 16;
  const std::vector<int> lens = {1, 15, 16, 17, 300};
  const int rows = int(lens.size());
  std::vector<int32_t> q_ind = {0}, kv_ind = {0}, pages, kv_len, kv_pos0, pos;
  int n_pages = 0;
  for (int L : lens) n_pages += (L + page - 1) / page;
  const std::vector<int32_t> perm = shuffled_pages(n_pages, rng);
  for (int L : lens) {
    for (int p = 0; p < (L + page - 1) / page; ++p) pages.push_back(perm[pages.size()]);
    q_ind.push_back(q_ind.back() + 1), kv_ind.push_back(int32_t(pages.size())), kv_len.push_back(L), kv_pos0.push_back(0);
    pos.push_back(L - 1);
  }
  auto k = round_bf16(random_vec(size_t(n_pages + 1) * page * Hkv * hd, rng));
  auto v = round_bf16(random_vec(size_t(n_pages + 1) * page * Hkv * hd, rng));
  auto q = random_vec(size_t(rows) * H * hd, rng);
  kern::AttnShape S;
  S.rows = rows, S.heads = H, S.kv_heads = Hkv, S.head_dim = hd, S.page_size = page, S.q_stride = H * hd;
  S.scale = 0.125f;
  kern::AttnLevel L;
  L.num_items = rows, L.q_indptr = q_ind.data(), L.kv_indptr = kv_ind.data(), L.kv_pages = pages.data();
  L.kv_len = kv_len.data(), L.kv_pos0 = kv_pos0.data();
  for (int splits : {1, 2, 7, 16}) {
    std::vector<float> o_part(size_t(splits) * rows * H * hd), lse_part(size_t(splits) * rows * H);
    kern::ref::paged_attention(q.data(), pos.data(), L, S, k.data(), v.data(), splits, 0, o_part.data(), lse_part.data());
    std::vector<float> want(size_t(rows) * H * hd);
    kern::ref::merge_states(o_part.data(), lse_part.data(), splits, rows, H, hd, want.data(), nullptr);
    Dev<float> dq(q), dop(o_part.size()), dlp(lse_part.size());
    Dev<uint16_t> dk(to_bf16(k)), dv(to_bf16(v)), out(want.size());
    Dev<int32_t> dpos(pos), a(q_ind), b(kv_ind), c(pages), e(kv_len), f(kv_pos0), counters(std::vector<int32_t>(size_t(rows * Hkv), 0));
    std::vector<int32_t> ti, tr;
    kc::attention_tiles(q_ind, 1, ti, tr);
    Dev<int32_t> dti(ti), dtr(tr);
    kern::AttnLevel DL;
    DL.num_items = rows, DL.q_indptr = a.p, DL.kv_indptr = b.p, DL.kv_pages = c.p, DL.kv_len = e.p, DL.kv_pos0 = f.p;
    kc::AttnMerge merge;
    merge.slots = splits, merge.out = out.p, merge.counters = counters.p;
    for (bool early : {false, true}) {  // keys before each row's own position read before the wait, or after
      cudaMemset(out.p, 0xff, out.n * sizeof(uint16_t));  // NaN: a row the launch leaves unwritten fails
      for (int rep = 0; rep < 2; ++rep)  // the second launch relies on the counters the first left at zero
        kc::paged_attention(dq.p, dpos.p, DL, dti.p, dtr.p, int(ti.size()), 1, S, dk.p, dv.p, splits, 0, dop.p, dlp.p,
                            merge, nullptr, early);
      EXPECT_LE(rel_err(from_bf16(out.get()), want), 1e-2)
          << "H " << H << "/" << Hkv << " hd " << hd << " splits " << splits << (early ? ", keys read early" : "");
    }
  }
  }
}

TEST(GpuKernels, TensorCorePrefillAttentionMatchesReference) {
  std::mt19937_64 rng(27);
  cublasHandle_t handle;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  for (auto [H, Hkv] : std::vector<std::pair<int, int>>{{4, 4}, {32, 4}})
    for (int page : {1, 16})
      for (auto [rows, len, pos0] : std::vector<std::tuple<int, int, int>>{{16, 16, 0}, {33, 77, 0}, {100, 300, 0}, {40, 64, 64}}) {
        const int hd = 64, n_pages = (len + page - 1) / page + 2;
        auto k = round_bf16(random_vec(size_t(n_pages) * page * Hkv * hd, rng));
        auto v = round_bf16(random_vec(size_t(n_pages) * page * Hkv * hd, rng));
        std::vector<int32_t> all(static_cast<size_t>(n_pages));
        std::iota(all.begin(), all.end(), 0);
        std::shuffle(all.begin(), all.end(), rng);
        std::vector<int32_t> pages(all.begin(), all.begin() + (len + page - 1) / page);
        // A decode row first (so the item starts at row 1), then the chunk: bottom-right causal, or (pos0 > 0)
        // a suffix-less prefix level where every key precedes every query.
        std::vector<int32_t> pos = {len - 1};
        for (int i = 0; i < rows; ++i) pos.push_back(pos0 > 0 ? pos0 + len + i : len - rows + i);
        const int total = rows + 1, splits = 3;
        std::vector<int32_t> q_ind = {0, 1, total}, kv_ind = {0, 0, int(pages.size())}, kv_len = {0, len}, kv_pos = {0, 0};
        auto q = random_vec(size_t(total) * H * hd, rng);
        kern::AttnShape S;
        S.rows = total, S.heads = H, S.kv_heads = Hkv, S.head_dim = hd, S.page_size = page, S.q_stride = H * hd;
        S.scale = float(1 / std::sqrt(double(hd)));
        kern::AttnLevel L;
        L.num_items = 2, L.q_indptr = q_ind.data(), L.kv_indptr = kv_ind.data(), L.kv_pages = pages.data();
        L.kv_len = kv_len.data(), L.kv_pos0 = kv_pos.data();
        std::vector<float> o_part(size_t(splits) * total * H * hd), lse_part(size_t(splits) * total * H);
        kern::ref::paged_attention(q.data(), pos.data(), L, S, k.data(), v.data(), splits, 0, o_part.data(), lse_part.data());
        std::vector<float> want(size_t(total) * H * hd), want_lse(size_t(total) * H);
        kern::ref::merge_states(o_part.data(), lse_part.data(), splits, total, H, hd, want.data(), want_lse.data());
        // GPU: row 0 (kv_len 0) through the CUDA-core kernel, rows 1.. through the tensor-core path.
        Dev<float> dq(q), dop(o_part.size()), dlp(lse_part.size()), dout(want.size()), dlse(want_lse.size());
        Dev<uint16_t> dk(to_bf16(k)), dv(to_bf16(v));
        Dev<int32_t> dpos(pos), dqi(q_ind), dki(kv_ind), dpg(pages), dkl(kv_len), dkp(kv_pos), dti(std::vector<int32_t>{0}), dtr(std::vector<int32_t>{0});
        kern::AttnLevel DL;
        DL.num_items = 2, DL.q_indptr = dqi.p, DL.kv_indptr = dki.p, DL.kv_pages = dpg.p, DL.kv_len = dkl.p, DL.kv_pos0 = dkp.p;
        kc::paged_attention(dq.p, dpos.p, DL, dti.p, dtr.p, 1, 1, S, dk.p, dv.p, splits, 0, dop.p, dlp.p, kc::AttnMerge{}, nullptr);
        Dev<char> ws(kc::paged_prefill_workspace(rows, len, S));
        kc::paged_prefill(handle, dq.p, dpos.p, 1, rows, dpg.p, len, 0, S, dk.p, dv.p, splits, 0, dop.p, dlp.p, ws.p, nullptr);
        kc::merge_states(dop.p, dlp.p, splits, total, H, hd, nullptr, dout.p, dlse.p, nullptr);
        const std::string where = "H " + std::to_string(H) + "/" + std::to_string(Hkv) + " page " + std::to_string(page) +
                                  " rows " + std::to_string(rows) + " len " + std::to_string(len);
        auto got = dout.get();
        for (float x : got) ASSERT_FALSE(std::isnan(x)) << where;
        EXPECT_LE(rel_err(got, want), 1e-2) << where;
        auto got_lse = dlse.get();
        for (size_t i = size_t(H); i < got_lse.size(); ++i) ASSERT_NEAR(got_lse[i], want_lse[i], 2e-2) << where;
      }
  cublasDestroy(handle);
}

// The tensor-core kernel in its three shapes (narrow: decode tiles, keys split over warps; medium and wide: chunk
// tiles of 2 and 4 query warps) on one step mixing decode rows, bottom-right causal chunks and a prefix-level
// item (every key before every query).
TEST(GpuKernels, TensorCoreAttentionMatchesReference) {
  std::mt19937_64 rng(31);
  struct Item {
    int rows, len, pos0;
  };
  const std::vector<Item> items = {{1, 1, 0}, {1, 17, 0}, {1, 300, 0}, {5, 5, 0}, {40, 77, 0}, {100, 300, 0}, {9, 130, 64}};
  for (auto [H, Hkv, hd] : std::vector<std::tuple<int, int, int>>{{4, 4, 64}, {8, 1, 64}, {32, 4, 64}, {12, 4, 128}, {16, 1, 128}})
    for (int page : {1, 16}) {
      std::vector<int32_t> q_ind = {0}, kv_ind = {0}, pages, kv_len, kv_pos0, pos;
      int n_pages = 0;
      for (const Item& it : items) n_pages += (it.len + page - 1) / page;
      const std::vector<int32_t> perm = shuffled_pages(n_pages, rng);
      for (const Item& it : items) {
        for (int p = 0; p < (it.len + page - 1) / page; ++p) pages.push_back(perm[pages.size()]);
        q_ind.push_back(q_ind.back() + it.rows), kv_ind.push_back(int32_t(pages.size()));
        kv_len.push_back(it.len), kv_pos0.push_back(it.pos0);
        for (int i = 0; i < it.rows; ++i) pos.push_back(it.pos0 > 0 ? it.pos0 + it.len + i : it.len - it.rows + i);
      }
      const int rows = q_ind.back();
      auto k = round_bf16(random_vec(size_t(n_pages + 1) * page * Hkv * hd, rng));
      auto v = round_bf16(random_vec(size_t(n_pages + 1) * page * Hkv * hd, rng));
      auto q = random_vec(size_t(rows) * H * hd, rng);
      kern::AttnShape S;
      S.rows = rows, S.heads = H, S.kv_heads = Hkv, S.head_dim = hd, S.page_size = page, S.q_stride = H * hd;
      S.scale = float(1 / std::sqrt(double(hd)));
      ASSERT_TRUE(kc::attention_mma_supported(S));
      kern::AttnLevel L;
      L.num_items = int(items.size()), L.q_indptr = q_ind.data(), L.kv_indptr = kv_ind.data(), L.kv_pages = pages.data();
      L.kv_len = kv_len.data(), L.kv_pos0 = kv_pos0.data();
      Dev<float> dq(q);
      Dev<uint16_t> dk(to_bf16(k)), dv(to_bf16(v));
      Dev<int32_t> dpos(pos), a(q_ind), b(kv_ind), c(pages), e(kv_len), f(kv_pos0);
      kern::AttnLevel DL;
      DL.num_items = L.num_items, DL.q_indptr = a.p, DL.kv_indptr = b.p, DL.kv_pages = c.p, DL.kv_len = e.p, DL.kv_pos0 = f.p;
      for (int splits : {1, 3})
        for (int qw : {1, 2, 4}) {  // warps over query rows: narrow, medium, wide tiles
          std::vector<float> o_part(size_t(splits) * rows * H * hd), lse_part(size_t(splits) * rows * H);
          kern::ref::paged_attention(q.data(), pos.data(), L, S, k.data(), v.data(), splits, 0, o_part.data(), lse_part.data());
          std::vector<float> want(size_t(rows) * H * hd), want_lse(size_t(rows) * H);
          kern::ref::merge_states(o_part.data(), lse_part.data(), splits, rows, H, hd, want.data(), want_lse.data());
          const int rpt = kc::attention_mma_rows_per_tile(H, Hkv, qw);
          std::vector<int32_t> ti, tr;
          kc::attention_tiles(q_ind, rpt, ti, tr);
          Dev<int32_t> dti(ti), dtr(tr), counters(std::vector<int32_t>(ti.size() * size_t(Hkv), 0));
          Dev<float> dop(o_part.size()), dlp(lse_part.size()), dout(want.size()), dlse(want_lse.size());
          Dev<uint16_t> fused(want.size());
          kc::AttnMerge merge;
          merge.slots = splits, merge.out = fused.p, merge.counters = counters.p;
          kc::paged_attention_mma(dq.p, dpos.p, DL, dti.p, dtr.p, int(ti.size()), rpt, qw, S, dk.p, dv.p, splits, 0,
                                  dop.p, dlp.p, kc::AttnMerge{}, nullptr);
          Dev<float> dop2(o_part.size()), dlp2(lse_part.size());  // one slot: the fused launch writes out directly
          for (int rep = 0; rep < 2; ++rep)  // the second launch relies on the counters the first left at zero
            kc::paged_attention_mma(dq.p, dpos.p, DL, dti.p, dtr.p, int(ti.size()), rpt, qw, S, dk.p, dv.p, splits, 0,
                                    dop2.p, dlp2.p, merge, nullptr);
          kc::merge_states(dop.p, dlp.p, splits, rows, H, hd, nullptr, dout.p, dlse.p, nullptr);
          const std::string where = "H " + std::to_string(H) + "/" + std::to_string(Hkv) + " hd " + std::to_string(hd) +
                                    " page " + std::to_string(page) + " splits " + std::to_string(splits) +
                                    " query warps " + std::to_string(qw);
          auto got = dout.get();
          for (float x : got) ASSERT_FALSE(std::isnan(x)) << where;
          EXPECT_LE(rel_err(got, want), 1e-2) << where;
          EXPECT_LE(rel_err(from_bf16(fused.get()), want), 1e-2) << where << " (fused merge)";
          for (int32_t cnt : counters.get()) ASSERT_EQ(cnt, 0) << where << ": counters are left at zero";
          auto got_lse = dlse.get();
          for (size_t i = 0; i < got_lse.size(); ++i) ASSERT_NEAR(got_lse[i], want_lse[i], 2e-2) << where << " lse " << i;
        }
      // One launch for both kinds: items shorter than a chunk tile in narrow tiles (split), the rest in chunk
      // tiles of 2 or 4 query warps, split as often as the narrow ones or three times.
      for (int splits : {1, 4})
        for (int wide_qw : {2, 4}) {
          const int wide_splits = wide_qw == 2 ? 3 : splits, slots = std::max(splits, wide_splits);
          const int wide_rpt = kc::attention_mma_rows_per_tile(H, Hkv, wide_qw);
          const int narrow_rpt = kc::attention_mma_rows_per_tile(H, Hkv, 1);
          std::vector<int32_t> ti, tr, wi, wr;
          for (size_t i = 0; i < items.size(); ++i) {
            const bool wide = items[i].rows >= wide_rpt;
            for (int r = q_ind[i]; r < q_ind[i + 1]; r += wide ? wide_rpt : narrow_rpt)
              (wide ? wi : ti).push_back(int32_t(i)), (wide ? wr : tr).push_back(r);
          }
          const int narrow_tiles = int(ti.size()), wide_tiles = int(wi.size());
          ti.insert(ti.end(), wi.begin(), wi.end()), tr.insert(tr.end(), wr.begin(), wr.end());
          std::vector<float> o_part(size_t(slots) * rows * H * hd), lse_part(size_t(slots) * rows * H);
          kern::ref::paged_attention(q.data(), pos.data(), L, S, k.data(), v.data(), splits, 0, o_part.data(), lse_part.data());
          std::vector<float> want(size_t(rows) * H * hd);
          kern::ref::merge_states(o_part.data(), lse_part.data(), splits, rows, H, hd, want.data(), nullptr);
          Dev<int32_t> dti(ti), dtr(tr), counters(std::vector<int32_t>(ti.size() * size_t(Hkv), 0));
          Dev<float> dop(o_part.size()), dlp(lse_part.size());
          Dev<uint16_t> out(want.size());
          kc::AttnMerge merge;
          merge.slots = slots, merge.out = out.p, merge.counters = counters.p;
          for (int rep = 0; rep < 2; ++rep)
            kc::paged_attention_mma_mixed(dq.p, dpos.p, DL, dti.p, dtr.p, narrow_tiles, narrow_rpt, wide_tiles, wide_qw, S,
                                          dk.p, dv.p, splits, wide_splits, dop.p, dlp.p, merge, nullptr);
          const std::string where = "mixed H " + std::to_string(H) + "/" + std::to_string(Hkv) + " hd " + std::to_string(hd) +
                                    " page " + std::to_string(page) + " splits " + std::to_string(splits) +
                                    " chunk query warps " + std::to_string(wide_qw) + " chunk splits " +
                                    std::to_string(wide_splits);
          auto got = from_bf16(out.get());
          for (float x : got) ASSERT_FALSE(std::isnan(x)) << where;
          EXPECT_LE(rel_err(got, want), 1e-2) << where;
          for (int32_t cnt : counters.get()) ASSERT_EQ(cnt, 0) << where << ": counters are left at zero";
        }
    }
}

// Decode attention with RoPE and the KV append inside (paged_attention_mma_decode_rope) against the separate
// kernels it replaces: rope_append, then the narrow tensor-core attention. The same arithmetic, so the output
// and both caches must be bit for bit those of the separate launches (which the tests above hold to the CPU
// references). Decode rows of lengths 1-300, one with a shifted position (kv_pos0), shuffled pages of 1 and
// 16, one to three splits, head dims 64 and 128.
TEST(GpuKernels, DecodeAttentionWithRopeInsideEqualsRopeAppendThenAttention) {
  std::mt19937_64 rng(41);
  struct Item {
    int len, pos0;
  };
  const std::vector<Item> items = {{1, 0}, {17, 0}, {64, 0}, {65, 0}, {300, 0}, {130, 64}, {2, 0}};
  for (auto [H, Hkv, hd] : std::vector<std::tuple<int, int, int>>{{32, 4, 64}, {8, 1, 64}, {12, 4, 128}})
    for (int page : {1, 16})
      for (int splits : {1, 3}) {
        std::vector<int32_t> q_ind = {0}, kv_ind = {0}, pages, kv_len, kv_pos0, pos, slot;
        int n_pages = 0;
        for (const Item& it : items) n_pages += (it.len + page - 1) / page;
        const std::vector<int32_t> perm = shuffled_pages(n_pages, rng);
        for (const Item& it : items) {
          const size_t first = pages.size();
          for (int p = 0; p < (it.len + page - 1) / page; ++p) pages.push_back(perm[pages.size()]);
          const int t_new = it.len - 1;  // this step's token: the last key
          q_ind.push_back(q_ind.back() + 1), kv_ind.push_back(int32_t(pages.size()));
          kv_len.push_back(it.len), kv_pos0.push_back(it.pos0), pos.push_back(it.pos0 + t_new);
          slot.push_back(pages[first + size_t(t_new / page)] * page + t_new % page);
        }
        const int rows = q_ind.back(), nqkv = (H + 2 * Hkv) * hd;
        const auto kc0 = to_bf16(random_vec(size_t(n_pages + 1) * page * Hkv * hd, rng));
        const auto vc0 = to_bf16(random_vec(size_t(n_pages + 1) * page * Hkv * hd, rng));
        const auto qkv = random_vec(size_t(rows) * nqkv, rng);
        kern::AttnShape S;
        S.rows = rows, S.heads = H, S.kv_heads = Hkv, S.head_dim = hd, S.page_size = page, S.q_stride = nqkv;
        S.scale = float(1 / std::sqrt(double(hd)));
        std::vector<int32_t> ti, tr;
        kc::attention_tiles(q_ind, 1, ti, tr);
        Dev<int32_t> dpos(pos), dslot(slot), a(q_ind), b(kv_ind), c(pages), e(kv_len), f(kv_pos0), dti(ti), dtr(tr);
        kern::AttnLevel DL;
        DL.num_items = int(items.size()), DL.q_indptr = a.p, DL.kv_indptr = b.p, DL.kv_pages = c.p, DL.kv_len = e.p;
        DL.kv_pos0 = f.p;
        const size_t n_out = size_t(rows) * H * hd;
        auto run = [&](bool inside, std::vector<uint16_t>& out, std::vector<uint16_t>& kc_out, std::vector<uint16_t>& vc_out) {
          Dev<float> dqkv(qkv), dop(size_t(splits) * n_out), dlp(size_t(splits) * rows * H);
          Dev<uint16_t> dk(kc0), dv(vc0), dout(n_out);
          Dev<int32_t> counters(std::vector<int32_t>(ti.size() * size_t(Hkv), 0));
          kc::AttnMerge merge;
          merge.slots = splits, merge.out = dout.p, merge.counters = counters.p;
          if (inside) {
            kc::paged_attention_mma_decode_rope(dqkv.p, dpos.p, DL, dti.p, dtr.p, int(ti.size()), S, dk.p, dv.p, splits,
                                                dop.p, dlp.p, merge, 10000.f, nullptr);
          } else {
            kc::rope_append(dqkv.p, dpos.p, dslot.p, rows, H, Hkv, hd, 10000.f, dk.p, dv.p, nullptr);
            kc::paged_attention_mma(dqkv.p, dpos.p, DL, dti.p, dtr.p, int(ti.size()), 1, 1, S, dk.p, dv.p, splits, 0,
                                    dop.p, dlp.p, merge, nullptr);
          }
          out = dout.get(), kc_out = dk.get(), vc_out = dv.get();
          for (int32_t cnt : counters.get()) ASSERT_EQ(cnt, 0) << "counters are left at zero";
        };
        std::vector<uint16_t> want, want_k, want_v, got, got_k, got_v;
        run(false, want, want_k, want_v);
        run(true, got, got_k, got_v);
        const std::string where = "H " + std::to_string(H) + "/" + std::to_string(Hkv) + " hd " + std::to_string(hd) +
                                  " page " + std::to_string(page) + " splits " + std::to_string(splits);
        for (float x : from_bf16(got)) ASSERT_FALSE(std::isnan(x)) << where;
        EXPECT_EQ(got, want) << where << ": attention output";
        EXPECT_EQ(got_k, want_k) << where << ": K cache";
        EXPECT_EQ(got_v, want_v) << where << ": V cache";
        EXPECT_NE(got_k, kc0) << where << ": the step's keys were appended";
      }
}

// Attention with the rope phase inside against rope_append, then the same attention launch without it: the
// same arithmetic, so output and caches bit for bit. Two launches: narrow tiles for every item
// (paged_attention_mma_rope_phase), and the one mixed launch with the chunks of a medium tile's rows or more in
// medium tiles (paged_attention_mma_mixed with the phase). Decode rows (one with a shifted position) beside
// chunks of 2-40 rows, tiles of several rows, shuffled pages of 1 and 16, one to three splits, head dims 64 and
// 128; with one KV head and one split a launch has fewer blocks than (row, KV head) units, so blocks claim
// several. Launched twice: the counters end at zero.
TEST(GpuKernels, AttentionWithTheRopePhaseEqualsRopeAppendThenAttention) {
  std::mt19937_64 rng(43);
  struct Item {
    int len, pos0, rows;  // keys (this step's rows are the last `rows` of them), position of key 0, rows
  };
  const std::vector<Item> items = {{1, 0, 1},   {17, 0, 1},  {300, 0, 1}, {130, 64, 1}, {40, 0, 40},
                                   {200, 0, 17}, {97, 31, 2}, {130, 0, 33}, {2, 0, 1}};
  for (auto [H, Hkv, hd] : std::vector<std::tuple<int, int, int>>{{32, 4, 64}, {8, 1, 64}, {12, 4, 128}})
    for (int page : {1, 16})
      for (int splits : {1, 3}) {
        const int rpt = kc::attention_mma_rows_per_tile(H, Hkv, 1);
        std::vector<int32_t> q_ind = {0}, kv_ind = {0}, pages, kv_len, kv_pos0, pos, slot;
        int n_pages = 0;
        for (const Item& it : items) n_pages += (it.len + page - 1) / page;
        const std::vector<int32_t> perm = shuffled_pages(n_pages, rng);
        for (const Item& it : items) {
          const size_t first = pages.size();
          for (int p = 0; p < (it.len + page - 1) / page; ++p) pages.push_back(perm[pages.size()]);
          for (int t = it.len - it.rows; t < it.len; ++t) {  // this step's tokens: the last keys
            pos.push_back(it.pos0 + t);
            slot.push_back(pages[first + size_t(t / page)] * page + t % page);
          }
          q_ind.push_back(q_ind.back() + it.rows), kv_ind.push_back(int32_t(pages.size()));
          kv_len.push_back(it.len), kv_pos0.push_back(it.pos0);
        }
        const int rows = q_ind.back(), nqkv = (H + 2 * Hkv) * hd;
        const auto kc0 = to_bf16(random_vec(size_t(n_pages + 1) * page * Hkv * hd, rng));
        const auto vc0 = to_bf16(random_vec(size_t(n_pages + 1) * page * Hkv * hd, rng));
        const auto qkv = random_vec(size_t(rows) * nqkv, rng);
        kern::AttnShape S;
        S.rows = rows, S.heads = H, S.kv_heads = Hkv, S.head_dim = hd, S.page_size = page, S.q_stride = nqkv;
        S.scale = float(1 / std::sqrt(double(hd)));
        const int wide_rpt = kc::attention_mma_rows_per_tile(H, Hkv, 2);
        std::vector<int32_t> ti, tr, mixed_ti, mixed_tr, wi, wr;
        kc::attention_tiles(q_ind, rpt, ti, tr);
        for (size_t i = 0; i < items.size(); ++i) {  // the mixed launch: narrow tiles first, then medium ones
          const bool wide = items[i].rows >= wide_rpt;
          for (int r = q_ind[i]; r < q_ind[i + 1]; r += wide ? wide_rpt : rpt)
            (wide ? wi : mixed_ti).push_back(int32_t(i)), (wide ? wr : mixed_tr).push_back(r);
        }
        const int narrow_tiles = int(mixed_ti.size()), wide_tiles = int(wi.size());
        mixed_ti.insert(mixed_ti.end(), wi.begin(), wi.end()), mixed_tr.insert(mixed_tr.end(), wr.begin(), wr.end());
        Dev<int32_t> dpos(pos), dslot(slot), a(q_ind), b(kv_ind), c(pages), e(kv_len), f(kv_pos0), dti(ti), dtr(tr);
        Dev<int32_t> dmti(mixed_ti), dmtr(mixed_tr);
        kern::AttnLevel DL;
        DL.num_items = int(items.size()), DL.q_indptr = a.p, DL.kv_indptr = b.p, DL.kv_pages = c.p, DL.kv_len = e.p;
        DL.kv_pos0 = f.p;
        const size_t n_out = size_t(rows) * H * hd;
        Dev<int32_t> sync(std::vector<int32_t>(3, 0));
        kc::AttnRopePhase phase;
        phase.slot = dslot.p, phase.sync = sync.p, phase.theta = 10000.f;
        for (bool mixed : {false, true}) {
          const std::string where = std::string(mixed ? "mixed launch" : "narrow launch") + " H " + std::to_string(H) +
                                    "/" + std::to_string(Hkv) + " hd " + std::to_string(hd) + " page " +
                                    std::to_string(page) + " splits " + std::to_string(splits) + " rows per tile " +
                                    std::to_string(rpt);
          auto run = [&](bool inside, std::vector<uint16_t>& out, std::vector<uint16_t>& kc_out, std::vector<uint16_t>& vc_out) {
            Dev<float> dqkv(qkv), dop(size_t(splits) * n_out), dlp(size_t(splits) * rows * H);
            Dev<uint16_t> dk(kc0), dv(vc0), dout(n_out);
            Dev<int32_t> counters(std::vector<int32_t>(mixed_ti.size() * size_t(Hkv), 0));
            kc::AttnMerge merge;
            merge.slots = splits, merge.out = dout.p, merge.counters = counters.p;
            if (!inside) kc::rope_append(dqkv.p, dpos.p, dslot.p, rows, H, Hkv, hd, 10000.f, dk.p, dv.p, nullptr);
            if (mixed)
              kc::paged_attention_mma_mixed(dqkv.p, dpos.p, DL, dmti.p, dmtr.p, narrow_tiles, rpt, wide_tiles, 2, S, dk.p,
                                            dv.p, splits, splits, dop.p, dlp.p, merge, nullptr, inside ? &phase : nullptr);
            else if (inside)
              kc::paged_attention_mma_rope_phase(dqkv.p, dpos.p, DL, dti.p, dtr.p, int(ti.size()), rpt, S, dk.p, dv.p,
                                                 splits, dop.p, dlp.p, merge, phase, nullptr);
            else
              kc::paged_attention_mma(dqkv.p, dpos.p, DL, dti.p, dtr.p, int(ti.size()), rpt, 1, S, dk.p, dv.p, splits, 0,
                                      dop.p, dlp.p, merge, nullptr);
            out = dout.get(), kc_out = dk.get(), vc_out = dv.get();
            for (int32_t cnt : counters.get()) ASSERT_EQ(cnt, 0) << where << ": merge counters are left at zero";
          };
          std::vector<uint16_t> want, want_k, want_v, got, got_k, got_v;
          run(false, want, want_k, want_v);
          for (int rep = 0; rep < 2; ++rep) {  // the second launch relies on the counters the first left at zero
            run(true, got, got_k, got_v);
            for (float x : from_bf16(got)) ASSERT_FALSE(std::isnan(x)) << where;
            EXPECT_EQ(got, want) << where << ": attention output, launch " << rep;
            EXPECT_EQ(got_k, want_k) << where << ": K cache, launch " << rep;
            EXPECT_EQ(got_v, want_v) << where << ": V cache, launch " << rep;
            for (int32_t cnt : sync.get()) ASSERT_EQ(cnt, 0) << where << ": rope-phase counters are left at zero";
          }
          EXPECT_NE(got_k, kc0) << where << ": the step's keys were appended";
          if (mixed) EXPECT_GT(wide_tiles, 0) << where << ": the mixed launch has medium tiles";
        }
      }
}

TEST(GpuKernels, SamplingPicksTheReferenceToken) {
  std::mt19937_64 rng(24);
  const int rows = 64, V = 32000;
  auto logits = random_vec(size_t(rows) * V, rng, 2.f);
  std::vector<kern::SampleParams> p(static_cast<size_t>(rows));
  for (int r = 0; r < rows; ++r) {
    auto& s = p[size_t(r)];
    s.seed = 77, s.counter = uint64_t(r);
    s.temperature = r % 4 == 0 ? 0.f : 0.5f + 0.1f * float(r % 7);
    s.top_k = r % 3 == 1 ? 1 + r * 7 : 0;
    s.top_p = r % 5 == 2 ? 0.3f + 0.01f * float(r) : 1.f;
  }
  std::vector<int32_t> want(static_cast<size_t>(rows));
  kern::ref::sample(logits.data(), rows, V, p.data(), want.data());
  Dev<float> dl(logits);
  Dev<kern::SampleParams> dp(p);
  Dev<int32_t> dout(static_cast<size_t>(rows));
  kc::sample(dl.p, rows, V, dp.p, dout.p, nullptr);
  EXPECT_EQ(dout.get(), want);
}

namespace {

serve::StepPlan prefill_plan(const std::vector<std::vector<int32_t>>& prompts, int page, int first_page) {
  serve::StepPlan plan;
  int next_page = first_page;
  for (const auto& pr : prompts) {
    serve::AttnItem it;
    it.q_begin = plan.rows();
    const int n = int(pr.size());
    for (int p = 0; p < (n + page - 1) / page; ++p) it.pages.push_back(next_page++);
    for (int p = 0; p < n; ++p) {
      plan.tokens.push_back(pr[size_t(p)]);
      plan.positions.push_back(p);
      plan.slots.push_back(it.pages[size_t(p / page)] * page + p % page);
      plan.sample_rows.push_back(plan.rows() - 1);
      plan.sample_params.push_back({});
    }
    it.q_end = plan.rows(), it.kv_len = n;
    if (plan.levels.empty()) plan.levels.resize(1);
    plan.levels[0].push_back(it);
  }
  return plan;
}

// Greedy token lists A and B agree, or first differ where the reference's top two logits are a near-tie.
::testing::AssertionResult same_or_near_tie(const serve::Bundle& b, const std::vector<int32_t>& prompt,
                                            const std::vector<int32_t>& a, const std::vector<int32_t>& c) {
  size_t i = 0;
  while (i < a.size() && i < c.size() && a[i] == c[i]) ++i;
  if (i == a.size() && i == c.size()) return ::testing::AssertionSuccess();
  if (i == a.size() || i == c.size()) return ::testing::AssertionFailure() << "lengths differ";
  serve::CpuModel m(b);
  auto cache = m.new_cache();
  std::vector<float> logits;
  for (int32_t t : prompt) logits = m.step(t, cache);
  for (size_t j = 0; j < i; ++j) logits = m.step(a[j], cache);
  const float hi = *std::max_element(logits.begin(), logits.end()), lo = *std::min_element(logits.begin(), logits.end());
  const float gap = std::abs(logits[size_t(a[i])] - logits[size_t(c[i])]);
  if (gap <= 0.02f * (hi - lo)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "token " << i << " differs (" << a[i] << " vs " << c[i] << ") with a logit gap of "
                                       << gap << " of a range " << (hi - lo);
}

}  // namespace

TEST(GpuEngine, CudaLogitsMatchTheCpuBackendAtEveryPosition) {
  serve::Bundle b = bf16_bundle(small_serve_config(4, 2, 64), 31);
  std::mt19937_64 rng(25);
  std::vector<std::vector<int32_t>> prompts = {random_prompt(37, 512, rng), random_prompt(5, 512, rng), random_prompt(70, 512, rng)};
  serve::CpuBackendOptions co;
  co.num_pages = 40, co.round_like_cuda = true;  // the same bf16 roundings as the GPU, in fp32 arithmetic
  serve::CudaBackendOptions go;
  go.num_pages = 40, go.max_tokens = 256;
  serve::CpuBackend cpu(b, co);
  serve::CudaBackend gpu(b, go);
  auto plan = prefill_plan(prompts, 16, 1);
  std::vector<float> want, got;
  cpu.forward(plan, &want);
  gpu.forward(plan, &got);
  EXPECT_LE(rel_err(got, want), 1e-2);
  // KV contents too.
  for (int slot : {16, 17, 40, 100})
    for (bool key : {true, false}) EXPECT_LE(rel_err(gpu.cached(key, 1, slot), cpu.cached(key, 1, slot)), 1e-2);
}

TEST(GpuEngine, GreedyAgreesAcrossBudgetsGraphsSharingAndWithTheCpu) {
  serve::Bundle b = bf16_bundle(small_serve_config(8, 2, 64), 32);
  std::mt19937_64 rng(26);
  const auto prefix = random_prompt(48, 512, rng);
  std::vector<serve::GenRequest> reqs;
  for (int i = 0; i < 10; ++i) {
    serve::GenRequest r;
    r.id = i;
    r.prompt = i < 8 ? prefix : std::vector<int32_t>{};
    auto tail = random_prompt(2 + 3 * i, 512, rng);
    r.prompt.insert(r.prompt.end(), tail.begin(), tail.end());
    r.max_new_tokens = 12;
    reqs.push_back(r);
  }
  auto run = [&](serve::Backend& be, serve::EngineOptions eo) {
    serve::Engine e(be, eo);
    e.submit_batch(reqs);
    std::map<int64_t, std::vector<int32_t>> out;
    for (auto& r : e.run()) out[r.id] = r.tokens;
    return out;
  };
  serve::CpuBackendOptions co;
  co.num_pages = 200;
  serve::CpuBackend cpu(b, co);
  auto want = run(cpu, {});
  struct Variant { const char* name; int budget; bool graphs, sharing, cascade, mixed_graphs = false; };
  for (Variant v : {Variant{"budget 512, graphs", 512, true, false, true}, Variant{"budget 7, graphs", 7, true, false, true},
                    Variant{"budget 64, no graphs", 64, false, false, true}, Variant{"sharing + cascade", 64, true, true, true},
                    Variant{"sharing, flat", 17, true, true, false},
                    Variant{"budget 24, padded mixed-step graphs", 24, true, false, true, true},
                    Variant{"sharing, flat, padded mixed-step graphs", 17, true, true, false, true}}) {
    serve::CudaBackendOptions go;
    go.num_pages = 200, go.max_tokens = 512, go.cuda_graphs = v.graphs, go.graph_mixed_steps = v.mixed_graphs;
    serve::CudaBackend gpu(b, go);
    serve::EngineOptions eo;
    eo.token_budget = v.budget, eo.prefix_sharing = v.sharing, eo.cascade = v.cascade;
    auto got = run(gpu, eo);
    ASSERT_EQ(got.size(), want.size());
    for (auto& [id, toks] : want) {
      EXPECT_TRUE(same_or_near_tie(b, reqs[size_t(id)].prompt, toks, got[id])) << v.name << ", request " << id;
    }
    if (v.graphs && !v.sharing) {
      EXPECT_GT(gpu.graphs_captured(), 0) << v.name;
    }
    if (v.budget >= 64 && !v.sharing) {  // decode steps of up to 10 rows: RoPE and the KV append in the attention
      EXPECT_GT(gpu.rope_in_attention_steps(), 0) << v.name;
    }
  }
}

// Steps of one launch shape with different contents (tokens, positions, KV lengths): the graph-enabled
// backend captures the shape on its second sight and replays it; the tokens drawn equal those of eager steps.
TEST(GpuEngine, MixedStepsReplayedFromAGraphEqualEagerSteps) {
  serve::Bundle b = bf16_bundle(small_serve_config(8, 2, 64), 33);
  const int page = 16, pages_per_seq = 4, decodes = 3, chunk = 9;
  serve::StepPlan plan;
  auto item = [&](int seq, int rows, int kv_len, int salt) {  // sequence seq lives on its own 4 pages
    serve::AttnItem it;
    it.q_begin = plan.rows();
    for (int p = 0; p < (kv_len + page - 1) / page; ++p) it.pages.push_back(1 + pages_per_seq * seq + p);
    for (int r = 0; r < rows; ++r) {
      const int pos = kv_len - rows + r;
      plan.tokens.push_back((pos * 131 + r * 7 + salt * 29) % 512);
      plan.positions.push_back(pos);
      plan.slots.push_back(it.pages[size_t(pos / page)] * page + pos % page);
    }
    it.q_end = plan.rows(), it.kv_len = kv_len;
    plan.sample_rows.push_back(plan.rows() - 1), plan.sample_params.push_back({});
    plan.levels[0].push_back(it);
  };
  auto start = [&] { plan = serve::StepPlan{}, plan.levels.resize(1); };
  serve::CudaBackendOptions go;
  go.num_pages = 1 + pages_per_seq * (decodes + 1), go.max_tokens = 64, go.graph_mixed_steps = true;
  serve::CudaBackendOptions eager_opt = go;
  eager_opt.cuda_graphs = false;
  serve::CudaBackend graphed(b, go), eager(b, eager_opt);
  for (int seq = 0; seq <= decodes; ++seq) {  // every slot the steps read is written first
    start(), item(seq, pages_per_seq * page, pages_per_seq * page, 0);
    EXPECT_EQ(graphed.forward(plan, nullptr), eager.forward(plan, nullptr)) << "filling sequence " << seq;
  }
  for (int step = 0; step < 6; ++step) {  // 3 decode rows and a 9-row chunk
    start();
    for (int d = 0; d < decodes; ++d) item(d, 1, 20 + 5 * d + step, step);
    item(decodes, chunk, 30 + 3 * step, step);
    EXPECT_EQ(graphed.forward(plan, nullptr), eager.forward(plan, nullptr)) << "step " << step;
  }
  EXPECT_EQ(graphed.graphs_captured(), 2);  // the filling steps' shape and the mixed steps' shape
  EXPECT_EQ(eager.graphs_captured(), 0);
}
