// Matrix products y[T][out] = beta * y + x[T][in] W[out][in]^T (bf16 inputs, fp32 accumulation and output) on
// CUTLASS's Hopper kernels: TMA loads, warp-specialized wgmma, a persistent or stream-K tile scheduler, launched
// with programmatic dependent launch (the kernel waits for its predecessor before its first global read). They
// are candidates that the CUDA backend's tuner times beside cuBLAS (serve/tuned_gemm.h,
// CHUNKWISE_GEMM_CUTLASS=1); the reference is kern::ref::matmul (kernels/gemv/matmul_ref.cpp). Built only where
// CMake found the CUTLASS headers (PyPI's nvidia-cutlass): elsewhere there are no configurations.
// Must not: change anything but the summation order of the product, or launch when it cannot run the shape.
#include "kernels/cuda.h"

#if CHUNKWISE_CUTLASS
#define CUTLASS_ENABLE_GDC_FOR_SM90 1  // the kernels' griddepcontrol.wait before their first global read (PDL)
#include <iterator>

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/gemm/kernel/tile_scheduler.hpp>
#include <cutlass/util/packed_stride.hpp>

// CUTLASS 4.2's stream-K scheduler (is_last_tile) binds a member of a const scheduler to a non-const reference,
// which nvcc 13.0 rejects. The same function for the two tile shapes used below, with a copy of that member
// (the call only asks whether a next work unit exists; the copy it writes is dropped).
namespace cw::kern::cuda::cutlass_fix {
using Tile128x64 = cute::Shape<cute::_128, cute::_64, cute::_64>;
using Tile128x128 = cute::Shape<cute::_128, cute::_128, cute::_64>;
using Cluster1 = cute::Shape<cute::_1, cute::_1, cute::_1>;
}  // namespace cw::kern::cuda::cutlass_fix
#define CW_STREAM_K_IS_LAST_TILE(TILE)                                                                            \
  template <>                                                                                                     \
  CUTLASS_DEVICE bool cutlass::gemm::kernel::detail::PersistentTileSchedulerSm90StreamK<                          \
      TILE, cw::kern::cuda::cutlass_fix::Cluster1>::is_last_tile(WorkTileInfo work_tile_info,                     \
                                                                 uint32_t advance_count) const {                  \
    if (continue_current_work(work_tile_info)) return false;                                                      \
    uint32_t unit_iter_start = unit_iter_start_;                                                                  \
    const uint64_t next = current_work_linear_idx_ +                                                              \
                          uint64_t(gridDim.x) * uint64_t(gridDim.y) * uint64_t(gridDim.z) * uint64_t(advance_count); \
    return !get_current_work_for_linear_idx(unit_iter_start, next, block_id_in_cluster_, scheduler_params).is_valid(); \
  }
CW_STREAM_K_IS_LAST_TILE(cw::kern::cuda::cutlass_fix::Tile128x64)
CW_STREAM_K_IS_LAST_TILE(cw::kern::cuda::cutlass_fix::Tile128x128)
#undef CW_STREAM_K_IS_LAST_TILE
#endif

namespace cw::kern::cuda {

#if CHUNKWISE_CUTLASS
namespace {

using namespace cute;

// One configuration: x is A (T x in, row-major), W is B (in x out, column-major: W's rows), y is C and D
// (T x out, row-major).
template <class TileShape, class KernelSchedule, class EpilogueSchedule, class Scheduler>
struct Product {
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, Shape<_1, _1, _1>,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, float, cutlass::layout::RowMajor, 4, float,
      cutlass::layout::RowMajor, 4, EpilogueSchedule>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, cutlass::bfloat16_t, cutlass::layout::RowMajor, 8,
      cutlass::bfloat16_t, cutlass::layout::ColumnMajor, 8, float, TileShape, Shape<_1, _1, _1>,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue, Scheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static typename Gemm::Arguments arguments(const uint16_t* W, int out, int in, const uint16_t* x, int T, float beta,
                                            float* y) {
    using K = typename Gemm::GemmKernel;
    const auto sa = cutlass::make_cute_packed_stride(typename K::StrideA{}, make_shape(T, in, 1));
    const auto sb = cutlass::make_cute_packed_stride(typename K::StrideB{}, make_shape(out, in, 1));
    const auto sc = cutlass::make_cute_packed_stride(typename K::StrideC{}, make_shape(T, out, 1));
    const auto sd = cutlass::make_cute_packed_stride(typename K::StrideD{}, make_shape(T, out, 1));
    static const cutlass::KernelHardwareInfo hw = [] {
      cutlass::KernelHardwareInfo h;
      cudaGetDevice(&h.device_id);
      h.sm_count = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(h.device_id);
      return h;
    }();
    return typename Gemm::Arguments{cutlass::gemm::GemmUniversalMode::kGemm,
                                    {T, out, in, 1},
                                    {reinterpret_cast<const cutlass::bfloat16_t*>(x), sa,
                                     reinterpret_cast<const cutlass::bfloat16_t*>(W), sb},
                                    {{1.f, beta}, y, sc, y, sd},
                                    hw};
  }
  static int64_t workspace(int T, int out, int in) {
    const auto args = arguments(nullptr, out, in, nullptr, T, 0.f, nullptr);
    if (Gemm::can_implement(args) != cutlass::Status::kSuccess) return -1;
    return int64_t(Gemm::get_workspace_size(args));
  }
  static bool run(const uint16_t* W, int out, int in, const uint16_t* x, int T, float beta, float* y, void* ws,
                  size_t ws_bytes, cudaStream_t s) {
    const auto args = arguments(W, out, in, x, T, beta, y);
    if (Gemm::can_implement(args) != cutlass::Status::kSuccess || Gemm::get_workspace_size(args) > ws_bytes) return false;
    Gemm gemm;
    if (gemm.initialize(args, ws, s) != cutlass::Status::kSuccess) return false;
    return gemm.run(s, nullptr, /*launch_with_pdl=*/true) == cutlass::Status::kSuccess;
  }
};

using namespace cutlass::gemm;
using Pingpong64x128 = Product<Shape<_64, _128, _64>, KernelTmaWarpSpecializedPingpong,
                               cutlass::epilogue::TmaWarpSpecialized, PersistentScheduler>;
using Pingpong64x64 = Product<Shape<_64, _64, _128>, KernelTmaWarpSpecializedPingpong,
                              cutlass::epilogue::TmaWarpSpecialized, PersistentScheduler>;
using StreamK128x64 = Product<Shape<_128, _64, _64>, KernelTmaWarpSpecializedCooperative,
                              cutlass::epilogue::TmaWarpSpecializedCooperative, StreamKScheduler>;
using StreamK128x128 = Product<Shape<_128, _128, _64>, KernelTmaWarpSpecializedCooperative,
                               cutlass::epilogue::TmaWarpSpecializedCooperative, StreamKScheduler>;

template <class F>
auto with_config(int config, F&& f) {
  switch (config) {
    case 0: return f(Pingpong64x128{});
    case 1: return f(Pingpong64x64{});
    case 2: return f(StreamK128x64{});
    default: return f(StreamK128x128{});
  }
}

constexpr const char* kNames[] = {"cutlass 64x128x64 pingpong persistent", "cutlass 64x64x128 pingpong persistent",
                                  "cutlass 128x64x64 cooperative stream-k", "cutlass 128x128x64 cooperative stream-k"};

}  // namespace

int gemm_cutlass_configs() { return int(std::size(kNames)); }

const char* gemm_cutlass_name(int config) {
  return config >= 0 && config < gemm_cutlass_configs() ? kNames[config] : "none";
}

// The preconditions of every configuration (rows of 16 bytes for TMA); CUTLASS's can_implement checks the rest.
static bool shape_taken(int config, int T, int out, int in) {
  return config >= 0 && config < gemm_cutlass_configs() && T >= 1 && out % 4 == 0 && in % 8 == 0;
}

int64_t gemm_cutlass_workspace(int config, int T, int out, int in) {
  if (!shape_taken(config, T, out, in)) return -1;
  return with_config(config, [&](auto p) { return decltype(p)::workspace(T, out, in); });
}

bool gemm_cutlass(int config, const uint16_t* W, int out, int in, const uint16_t* x, int T, float beta, float* y,
                  void* workspace, size_t workspace_bytes, cudaStream_t s) {
  if (!shape_taken(config, T, out, in)) return false;  // run() checks the rest once, building its arguments
  return with_config(config, [&](auto p) {
    return decltype(p)::run(W, out, in, x, T, beta, y, workspace, workspace_bytes, s);
  });
}

#else  // built without the CUTLASS headers

int gemm_cutlass_configs() { return 0; }
const char* gemm_cutlass_name(int) { return "none"; }
int64_t gemm_cutlass_workspace(int, int, int, int) { return -1; }
bool gemm_cutlass(int, const uint16_t*, int, int, const uint16_t*, int, float, float*, void*, size_t, cudaStream_t) {
  return false;
}

#endif

}  // namespace cw::kern::cuda
