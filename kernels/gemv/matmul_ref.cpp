// CPU reference of kernels/gemv (and of the cuBLAS products the CUDA backend makes): y = beta*y + x W^T,
// dot products in double, output rows spread over the machine's threads.
#include <algorithm>
#include <thread>
#include <vector>

#include "kernels/reference.h"

namespace cw::kern::ref {

void matmul(const float* x, int T, int in, const float* W, int out, float beta, float* y) {
  auto rows = [&](int o0, int o1) {
    for (int o = o0; o < o1; ++o) {
      const float* w = W + int64_t(o) * in;
      for (int t = 0; t < T; ++t) {
        const float* xt = x + int64_t(t) * in;
        double s = 0;
        for (int i = 0; i < in; ++i) s += double(w[i]) * xt[i];
        float& dst = y[int64_t(t) * out + o];
        dst = float(s + (beta == 0 ? 0.0 : double(beta) * dst));
      }
    }
  };
  const int64_t work = int64_t(T) * in * out;
  const int n = work < (1 << 20) ? 1 : int(std::max(1u, std::min(16u, std::thread::hardware_concurrency())));
  if (n == 1) return rows(0, out);
  std::vector<std::thread> pool;
  const int per = (out + n - 1) / n;
  for (int k = 0; k < n; ++k) pool.emplace_back(rows, std::min(out, k * per), std::min(out, (k + 1) * per));
  for (auto& th : pool) th.join();
}

}  // namespace cw::kern::ref
