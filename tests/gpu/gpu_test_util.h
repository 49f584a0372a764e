// Helpers of the GPU test binary (tests/gpu/test_gpu_*.cpp): device copies of host vectors poisoned with NaN,
// bf16 conversions, a random model exactly representable in bf16, shuffled page tables, random paged caches,
// a product's reference answer beside its device output. Test code only: no
// kernel logic here.
#pragma once
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "kernels/reference.h"
#include "serve/bundle.h"
#include "tests/serve_test_util.h"

namespace cw::test {

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
  Dev(const Dev&) = delete;  // one owner of the device memory
  Dev& operator=(const Dev&) = delete;
  ~Dev() { cudaFree(p); }
  std::vector<T> get() const {
    std::vector<T> h(n);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
  }
};

inline std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = kern::float_to_bf16(v[i]);
  return o;
}
inline std::vector<float> from_bf16(const std::vector<uint16_t>& v) {
  std::vector<float> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = kern::bf16_to_float(v[i]);
  return o;
}
inline std::vector<float> round_bf16(const std::vector<float>& v) { return from_bf16(to_bf16(v)); }
// A random model whose weights are exactly representable in bf16, so CPU (fp32) and CUDA (bf16) hold the same.
inline serve::Bundle bf16_bundle(const ModelConfig& c, uint64_t seed) {
  serve::Bundle b = serve::random_bundle(c, seed, 0.1f);
  for (auto& [name, w] : b.weights) w.data = round_bf16(w.data);
  return b;
}
// Page numbers 0..n_pages in random order: block tables that are not in cache order.
// One spare page (n_pages + 1 entries) so that the tables also skip a page.
inline std::vector<int32_t> shuffled_pages(int n_pages, std::mt19937_64& rng) {
  std::vector<int32_t> perm(static_cast<size_t>(n_pages + 1));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  return perm;
}

// One product's check: the reference's answer want = beta * y0 + x W^T for a random y0 (T x out), and the
// device output the product writes into: y0, or NaN when beta is 0 (so a product that reads y then shows).
struct ProductCheck {
  std::vector<float> want;
  Dev<float> y;
};
inline ProductCheck product_check(const std::vector<float>& x, int T, int in, const std::vector<float>& W, int out,
                                  float beta, std::mt19937_64& rng) {
  const auto y0 = random_vec(size_t(T) * out, rng);
  std::vector<float> want = y0;
  kern::ref::matmul(x.data(), T, in, W.data(), out, beta, want.data());
  return {std::move(want), Dev<float>(beta == 0 ? std::vector<float>(y0.size(), NAN) : y0)};
}
// A paged cache's keys and values for N_PAGES pages, exactly representable in bf16 (keys drawn first).
struct PagedKv {
  std::vector<float> k, v;
};
inline PagedKv random_paged_kv(int n_pages, int page, int kv_heads, int head_dim, std::mt19937_64& rng) {
  const size_t n = size_t(n_pages) * page * kv_heads * head_dim;
  PagedKv kv;
  kv.k = round_bf16(random_vec(n, rng));
  kv.v = round_bf16(random_vec(n, rng));
  return kv;
}

}  // namespace cw::test
