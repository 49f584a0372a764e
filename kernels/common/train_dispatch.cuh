// Host-side dispatch shared by the launchers of the training kernels (rope_qkv/, swiglu_grad/, add_rmsnorm/,
// cross_entropy/): pick the element type from a Storage, and the pack width (elements per 16-byte access)
// when the caller's shapes and pointers allow it.
// Must not: launch anything itself or be included from host-only C++.
#pragma once
#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "kernels/common/device.cuh"
#include "kernels/train_ops.h"

namespace cw::kern::cuda {

// Runs f(T{}) with T = uint16_t (bf16 bits) or float.
template <typename F>
void with_storage(Storage st, F&& f) {
  if (st == Storage::BF16) f(uint16_t{});
  else f(float{});
}

// Runs f(T{}, std::integral_constant<int, N>{}) with N = 16 / sizeof(T) when fits(N), else N = 1.
template <typename Fits, typename F>
void with_storage_pack(Storage st, Fits&& fits, F&& f) {
  if (st == Storage::BF16) {
    if (fits(8)) f(uint16_t{}, std::integral_constant<int, 8>{});
    else f(uint16_t{}, std::integral_constant<int, 1>{});
  } else {
    if (fits(4)) f(float{}, std::integral_constant<int, 4>{});
    else f(float{}, std::integral_constant<int, 1>{});
  }
}

// As with_storage_pack, trying N = 32 / sizeof(T) first (two 16-byte accesses per item: more bytes in flight
// per thread, for kernels that do little else).
template <typename Fits, typename F>
void with_storage_wide_pack(Storage st, Fits&& fits, F&& f) {
  if (st == Storage::BF16 && fits(16)) return f(uint16_t{}, std::integral_constant<int, 16>{});
  if (st == Storage::F32 && fits(8)) return f(float{}, std::integral_constant<int, 8>{});
  with_storage_pack(st, fits, f);
}

inline bool all_aligned16(std::initializer_list<const void*> ptrs) {
  return std::all_of(ptrs.begin(), ptrs.end(), [](const void* p) { return dev::aligned16(p); });
}

// Blocks for a kernel whose blocks stride over rows.
inline int row_blocks(int64_t rows, int64_t cap = 132 * 16) { return int(std::min<int64_t>(rows, cap)); }

// Blocks of 256 threads for a kernel whose threads stride over `items` flattened across rows: one item per
// thread up to eight blocks per SM of a 132-SM card, then each thread takes several.
inline int pack_blocks(int64_t items, int64_t cap = 132 * 8) {
  return int(std::max<int64_t>(1, std::min<int64_t>((items + 255) / 256, cap)));
}

}  // namespace cw::kern::cuda
