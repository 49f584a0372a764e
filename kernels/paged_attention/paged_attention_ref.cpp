// CPU reference of kernels/paged_attention: for each query row and head, a softmax over the item's visible
// KV tokens in each split part, written as a normalised partial output and its log-sum-exp (double inside).
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/reference.h"

namespace cw::kern::ref {

void paged_attention(const float* q, const int32_t* q_pos, const AttnLevel& L, const AttnShape& S,
                     const float* k_cache, const float* v_cache, int splits, int slot0, float* o_part,
                     float* lse_part) {
  const int hd = S.head_dim, group = S.heads / S.kv_heads;
  std::vector<double> score, acc(static_cast<size_t>(hd), 0.0);
  for (int it = 0; it < L.num_items; ++it) {
    const int kv_len = L.kv_len[it], part = split_size(kv_len, splits);
    auto kv_at = [&](const float* cache, int t, int kvh) {
      const int page = L.kv_pages[L.kv_indptr[it] + t / S.page_size];
      return cache + ((int64_t(page) * S.page_size + t % S.page_size) * S.kv_heads + kvh) * hd;
    };
    for (int r = L.q_indptr[it]; r < L.q_indptr[it + 1]; ++r)
      for (int h = 0; h < S.heads; ++h)
        for (int s = 0; s < splits; ++s) {
          const int begin = s * part;
          int end = std::min(kv_len, begin + part);
          end = std::min(end, q_pos[r] - L.kv_pos0[it] + 1);  // causal
          const float* qv = q + int64_t(r) * S.q_stride + int64_t(h) * hd;
          double mx = -std::numeric_limits<double>::infinity();
          score.assign(size_t(std::max(0, end - begin)), 0.0);
          for (int t = begin; t < end; ++t) {
            const float* k = kv_at(k_cache, t, h / group);
            double d = 0;
            for (int i = 0; i < hd; ++i) d += double(qv[i]) * k[i];
            score[size_t(t - begin)] = d * S.scale;
            mx = std::max(mx, score[size_t(t - begin)]);
          }
          const int64_t slot = slot0 + s, idx = (slot * S.rows + r) * S.heads + h;
          float* o = o_part + idx * hd;
          if (end <= begin) {
            for (int i = 0; i < hd; ++i) o[i] = 0;
            lse_part[idx] = -std::numeric_limits<float>::infinity();
            continue;
          }
          double z = 0;
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int t = begin; t < end; ++t) {
            const double p = std::exp(score[size_t(t - begin)] - mx);
            z += p;
            const float* v = kv_at(v_cache, t, h / group);
            for (int i = 0; i < hd; ++i) acc[size_t(i)] += p * v[i];
          }
          for (int i = 0; i < hd; ++i) o[i] = float(acc[size_t(i)] / z);
          lse_part[idx] = float(mx + std::log(z));
        }
  }
}

}  // namespace cw::kern::ref
