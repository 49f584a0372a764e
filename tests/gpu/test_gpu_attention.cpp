// GPU tests of RoPE with the KV append, paged attention (CUDA-core and tensor-core kernels, split-KV, cascade
// merge), attention with RoPE inside, and sampling, each against its CPU reference or against the separate
// launches it replaces, on fresh random inputs. Runs only where a GPU is present (tools/gpu-run); compiled in CI.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "kernels/cuda.h"
#include "kernels/reference.h"
#include "tests/gpu/gpu_test_util.h"

using namespace cw;
using namespace cw::test;
namespace kc = cw::kern::cuda;

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
          const auto [k, v] = random_paged_kv(n_pages, page, Hkv, hd, rng);
          const std::vector<int32_t> all = shuffled_pages(n_pages - 1, rng);
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
  const auto [k, v] = random_paged_kv(n_pages + 1, page, Hkv, hd, rng);
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
        const auto [k, v] = random_paged_kv(n_pages, page, Hkv, hd, rng);
        const std::vector<int32_t> all = shuffled_pages(n_pages - 1, rng);
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
      const auto [k, v] = random_paged_kv(n_pages + 1, page, Hkv, hd, rng);
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

namespace {

// One attention step for the RoPE tests: items whose last `rows` keys are this step's tokens (their q, k and v
// in random qkv rows), the items' pages shuffled (pages of `page` tokens), random bf16 caches; the host vectors
// and their device copies.
struct RopeStep {
  struct Item {
    int len, pos0, rows;  // keys (this step's rows are the last `rows` of them), position of key 0, rows
  };
  std::vector<int32_t> q_ind{0}, kv_ind{0}, pages, kv_len, kv_pos0, pos, slot;
  std::vector<uint16_t> kc0, vc0;
  std::vector<float> qkv;
  kern::AttnShape S;
  int rows = 0;
  std::string name;  // the shape, for failure messages

  RopeStep(const std::vector<Item>& items, int H, int Hkv, int hd, int page, std::mt19937_64& rng) {
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
    rows = q_ind.back();
    const int nqkv = (H + 2 * Hkv) * hd;
    kc0 = to_bf16(random_vec(size_t(n_pages + 1) * page * Hkv * hd, rng));
    vc0 = to_bf16(random_vec(size_t(n_pages + 1) * page * Hkv * hd, rng));
    qkv = random_vec(size_t(rows) * nqkv, rng);
    S.rows = rows, S.heads = H, S.kv_heads = Hkv, S.head_dim = hd, S.page_size = page, S.q_stride = nqkv;
    S.scale = float(1 / std::sqrt(double(hd)));
    name = "H " + std::to_string(H) + "/" + std::to_string(Hkv) + " hd " + std::to_string(hd) + " page " +
           std::to_string(page);
  }
  size_t out_size() const { return size_t(rows) * S.heads * S.head_dim; }
};

struct RopeStepOnDevice {  // the step's positions, slots and level on the device
  Dev<int32_t> pos, slot, q_ind, kv_ind, pages, kv_len, kv_pos0;
  kern::AttnLevel level;
  explicit RopeStepOnDevice(const RopeStep& h)
      : pos(h.pos), slot(h.slot), q_ind(h.q_ind), kv_ind(h.kv_ind), pages(h.pages), kv_len(h.kv_len),
        kv_pos0(h.kv_pos0) {
    level.num_items = int(h.kv_len.size()), level.q_indptr = q_ind.p, level.kv_indptr = kv_ind.p;
    level.kv_pages = pages.p, level.kv_len = kv_len.p, level.kv_pos0 = kv_pos0.p;
  }
};

struct AttnResult {  // what a launch left: the output and both caches
  std::vector<uint16_t> out, k, v;
};

// What one launch of a rope test reads and writes, fresh from the step: q/k/v, both caches, the splits' partial
// outputs and log-sum-exps, the merged output, and COUNTER_SLOTS merge counters at zero.
struct RopeRunBuffers {
  Dev<float> qkv, o_part, lse_part;
  Dev<uint16_t> k, v, out;
  Dev<int32_t> counters;
  kc::AttnMerge merge;
  RopeRunBuffers(const RopeStep& st, int splits, size_t counter_slots)
      : qkv(st.qkv), o_part(size_t(splits) * st.out_size()), lse_part(size_t(splits) * st.rows * st.S.heads),
        k(st.kc0), v(st.vc0), out(st.out_size()), counters(std::vector<int32_t>(counter_slots, 0)) {
    merge.slots = splits, merge.out = out.p, merge.counters = counters.p;
  }
  // The output and caches the launch left; its merge counters must be back at zero.
  AttnResult result(const std::string& where) const {
    AttnResult r{out.get(), k.get(), v.get()};
    for (int32_t cnt : counters.get()) EXPECT_EQ(cnt, 0) << where << ": merge counters are left at zero";
    return r;
  }
};

// RoPE inside the attention launch must give bit for bit what rope_append then the attention gave.
void expect_same_bits(const AttnResult& got, const AttnResult& want, const std::vector<uint16_t>& kc0,
                      const std::string& where) {
  for (float x : from_bf16(got.out)) ASSERT_FALSE(std::isnan(x)) << where;
  EXPECT_EQ(got.out, want.out) << where << ": attention output";
  EXPECT_EQ(got.k, want.k) << where << ": K cache";
  EXPECT_EQ(got.v, want.v) << where << ": V cache";
  EXPECT_NE(got.k, kc0) << where << ": the step's keys were appended";
}

}  // namespace

// Decode attention with RoPE and the KV append inside (paged_attention_mma_decode_rope) against the separate
// kernels it replaces: rope_append, then the narrow tensor-core attention. The same arithmetic, so the output
// and both caches must be bit for bit those of the separate launches (which the tests above hold to the CPU
// references). Decode rows of lengths 1-300, one with a shifted position (kv_pos0), shuffled pages of 1 and
// 16, one to three splits, head dims 64 and 128.
TEST(GpuKernels, DecodeAttentionWithRopeInsideEqualsRopeAppendThenAttention) {
  std::mt19937_64 rng(41);
  const std::vector<RopeStep::Item> items = {{1, 0, 1},  {17, 0, 1},  {64, 0, 1}, {65, 0, 1},
                                             {300, 0, 1}, {130, 64, 1}, {2, 0, 1}};
  for (auto [H, Hkv, hd] : std::vector<std::tuple<int, int, int>>{{32, 4, 64}, {8, 1, 64}, {12, 4, 128}})
    for (int page : {1, 16})
      for (int splits : {1, 3}) {
        const RopeStep st(items, H, Hkv, hd, page, rng);
        const RopeStepOnDevice d(st);
        std::vector<int32_t> ti, tr;
        kc::attention_tiles(st.q_ind, 1, ti, tr);
        Dev<int32_t> dti(ti), dtr(tr);
        auto run = [&](bool inside) {
          RopeRunBuffers b(st, splits, ti.size() * size_t(Hkv));
          if (inside) {
            kc::paged_attention_mma_decode_rope(b.qkv.p, d.pos.p, d.level, dti.p, dtr.p, int(ti.size()), st.S, b.k.p,
                                                b.v.p, splits, b.o_part.p, b.lse_part.p, b.merge, 10000.f, nullptr);
          } else {
            kc::rope_append(b.qkv.p, d.pos.p, d.slot.p, st.rows, H, Hkv, hd, 10000.f, b.k.p, b.v.p, nullptr);
            kc::paged_attention_mma(b.qkv.p, d.pos.p, d.level, dti.p, dtr.p, int(ti.size()), 1, 1, st.S, b.k.p, b.v.p,
                                    splits, 0, b.o_part.p, b.lse_part.p, b.merge, nullptr);
          }
          return b.result(st.name);
        };
        const AttnResult want = run(false);
        expect_same_bits(run(true), want, st.kc0, st.name + " splits " + std::to_string(splits));
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
  const std::vector<RopeStep::Item> items = {{1, 0, 1},    {17, 0, 1},  {300, 0, 1},  {130, 64, 1}, {40, 0, 40},
                                             {200, 0, 17}, {97, 31, 2}, {130, 0, 33}, {2, 0, 1}};
  for (auto [H, Hkv, hd] : std::vector<std::tuple<int, int, int>>{{32, 4, 64}, {8, 1, 64}, {12, 4, 128}})
    for (int page : {1, 16})
      for (int splits : {1, 3}) {
        const int rpt = kc::attention_mma_rows_per_tile(H, Hkv, 1);
        const RopeStep st(items, H, Hkv, hd, page, rng);
        const RopeStepOnDevice d(st);
        const int wide_rpt = kc::attention_mma_rows_per_tile(H, Hkv, 2);
        std::vector<int32_t> ti, tr, mixed_ti, mixed_tr, wi, wr;
        kc::attention_tiles(st.q_ind, rpt, ti, tr);
        for (size_t i = 0; i < items.size(); ++i) {  // the mixed launch: narrow tiles first, then medium ones
          const bool wide = items[i].rows >= wide_rpt;
          for (int r = st.q_ind[i]; r < st.q_ind[i + 1]; r += wide ? wide_rpt : rpt)
            (wide ? wi : mixed_ti).push_back(int32_t(i)), (wide ? wr : mixed_tr).push_back(r);
        }
        const int narrow_tiles = int(mixed_ti.size()), wide_tiles = int(wi.size());
        mixed_ti.insert(mixed_ti.end(), wi.begin(), wi.end()), mixed_tr.insert(mixed_tr.end(), wr.begin(), wr.end());
        Dev<int32_t> dti(ti), dtr(tr), dmti(mixed_ti), dmtr(mixed_tr);
        Dev<int32_t> sync(std::vector<int32_t>(3, 0));
        kc::AttnRopePhase phase;
        phase.slot = d.slot.p, phase.sync = sync.p, phase.theta = 10000.f;
        for (bool mixed : {false, true}) {
          const std::string where = std::string(mixed ? "mixed launch " : "narrow launch ") + st.name + " splits " +
                                    std::to_string(splits) + " rows per tile " + std::to_string(rpt);
          auto run = [&](bool inside) {
            RopeRunBuffers b(st, splits, mixed_ti.size() * size_t(Hkv));
            if (!inside)
              kc::rope_append(b.qkv.p, d.pos.p, d.slot.p, st.rows, H, Hkv, hd, 10000.f, b.k.p, b.v.p, nullptr);
            if (mixed)
              kc::paged_attention_mma_mixed(b.qkv.p, d.pos.p, d.level, dmti.p, dmtr.p, narrow_tiles, rpt, wide_tiles, 2,
                                            st.S, b.k.p, b.v.p, splits, splits, b.o_part.p, b.lse_part.p, b.merge,
                                            nullptr, inside ? &phase : nullptr);
            else if (inside)
              kc::paged_attention_mma_rope_phase(b.qkv.p, d.pos.p, d.level, dti.p, dtr.p, int(ti.size()), rpt, st.S,
                                                 b.k.p, b.v.p, splits, b.o_part.p, b.lse_part.p, b.merge, phase,
                                                 nullptr);
            else
              kc::paged_attention_mma(b.qkv.p, d.pos.p, d.level, dti.p, dtr.p, int(ti.size()), rpt, 1, st.S, b.k.p,
                                      b.v.p, splits, 0, b.o_part.p, b.lse_part.p, b.merge, nullptr);
            return b.result(where);
          };
          const AttnResult want = run(false);
          for (int rep = 0; rep < 2; ++rep) {  // the second launch relies on the counters the first left at zero
            expect_same_bits(run(true), want, st.kc0, where + ", launch " + std::to_string(rep));
            for (int32_t cnt : sync.get()) ASSERT_EQ(cnt, 0) << where << ": rope-phase counters are left at zero";
          }
          if (mixed) {
            EXPECT_GT(wide_tiles, 0) << where << ": the mixed launch has medium tiles";
          }
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

