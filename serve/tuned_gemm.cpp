// Implementation of serve/tuned_gemm.h.
#include "serve/tuned_gemm.h"

#include <chrono>
#include <cstdio>
#include <map>
#include <sstream>
#include <string>

#include "common/error.h"
#include "kernels/common/time_calls.h"
#include "kernels/cuda.h"

namespace cw::serve {

using kern::cuda::check_cuda;

static void check_lt(cublasStatus_t s, const char* what) {
  check(s == CUBLAS_STATUS_SUCCESS, what, ": cuBLAS(Lt) status ", int(s));
}

TunedGemm::TunedGemm(cublasHandle_t blas, cudaStream_t stream, void* workspace, size_t workspace_bytes,
                     bool cutlass_candidates, int cutlass_force)
    : blas_(blas), stream_(stream), ws_(workspace), ws_bytes_(workspace_bytes),
      cutlass_candidates_(cutlass_candidates && kern::cuda::gemm_cutlass_configs() > 0),
      cutlass_force_(cutlass_force < kern::cuda::gemm_cutlass_configs() ? cutlass_force : -1) {
  if (cutlass_candidates_ || cutlass_force_ >= 0) {
    cutlass_ws_bytes_ = size_t(64) << 20;
    check_cuda(cudaMalloc(&cutlass_ws_, cutlass_ws_bytes_), "the CUTLASS products' workspace");
  }
  check_lt(cublasLtCreate(&lt_), "creating the cuBLASLt handle");
  check_lt(cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cuBLASLt product description");
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  check_lt(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "cuBLASLt transpose");
  check_lt(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "cuBLASLt transpose");
}

TunedGemm::~TunedGemm() {
  for (auto& [s, l] : layouts_) {
    cublasLtMatrixLayoutDestroy(l.a), cublasLtMatrixLayoutDestroy(l.b), cublasLtMatrixLayoutDestroy(l.c);
  }
  if (cutlass_ws_) cudaFree(cutlass_ws_);
  if (desc_) cublasLtMatmulDescDestroy(desc_);
  if (lt_) cublasLtDestroy(lt_);
}

// Column-major views of the row-major tensors: W [out][in] is A (in x out, transposed), x [T][in] is B
// (in x T), y [T][out] is C and D (out x T).
const TunedGemm::Layouts& TunedGemm::layouts(int T, int out, int in) {
  auto [it, fresh] = layouts_.try_emplace(Shape{out, in, T});
  if (fresh) {
    Layouts& l = it->second;
    check_lt(cublasLtMatrixLayoutCreate(&l.a, CUDA_R_16BF, uint64_t(in), uint64_t(out), int64_t(in)), "cuBLASLt layout");
    check_lt(cublasLtMatrixLayoutCreate(&l.b, CUDA_R_16BF, uint64_t(in), uint64_t(T), int64_t(in)), "cuBLASLt layout");
    check_lt(cublasLtMatrixLayoutCreate(&l.c, CUDA_R_32F, uint64_t(out), uint64_t(T), int64_t(out)), "cuBLASLt layout");
  }
  return it->second;
}

void TunedGemm::gemm_default(int T, int out, int in, const uint16_t* W, const uint16_t* x, float beta, float* y) {
  const float alpha = 1;
  check_lt(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, out, T, in, &alpha, W, CUDA_R_16BF, in, x, CUDA_R_16BF, in,
                        &beta, y, CUDA_R_32F, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
           "matrix product");
}

bool TunedGemm::gemm_lt(const cublasLtMatmulAlgo_t& algo, int T, int out, int in, const uint16_t* W,
                        const uint16_t* x, float beta, float* y) {
  const float alpha = 1;
  const Layouts& l = layouts(T, out, in);
  return cublasLtMatmul(lt_, desc_, &alpha, W, l.a, x, l.b, &beta, y, l.c, y, l.c, &algo, ws_, ws_bytes_, stream_) ==
         CUBLAS_STATUS_SUCCESS;
}

void TunedGemm::tune(int T, int out, int in, const uint16_t* W, const uint16_t* x, float* scratch) {
  const auto t_start = std::chrono::steady_clock::now();
  const Layouts& l = layouts(T, out, in);
  cublasLtMatmulPreference_t pref = nullptr;
  check_lt(cublasLtMatmulPreferenceCreate(&pref), "cuBLASLt preference");
  const uint64_t ws = ws_bytes_;
  check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws),
           "cuBLASLt workspace preference");
  cublasLtMatmulHeuristicResult_t found[16];
  int n = 0;
  if (cublasLtMatmulAlgoGetHeuristic(lt_, desc_, l.a, l.b, l.c, l.c, pref, 16, found, &n) != CUBLAS_STATUS_SUCCESS) n = 0;
  cublasLtMatmulPreferenceDestroy(pref);

  // Microseconds per product, or a negative number where a run failed.
  auto time = [&](auto&& product) { return kern::cuda::time_calls_us(product, stream_, 10); };
  Choice ch;
  ch.default_us = ch.us = time([&] { gemm_default(T, out, in, W, x, 0.f, scratch); return true; });
  for (int i = 0; i < n; ++i) {
    if (found[i].state != CUBLAS_STATUS_SUCCESS || found[i].workspaceSize > ws_bytes_) continue;
    const float us = time([&] { return gemm_lt(found[i].algo, T, out, in, W, x, 0.f, scratch); });
    if (us > 0 && (ch.best_lt_us < 0 || us < ch.best_lt_us)) ch.best_lt_us = us;
    if (us > 0 && us < 0.97f * ch.us) ch.lt = true, ch.algo = found[i].algo, ch.us = us;  // 3 %: beyond noise
  }
  for (int c = 0; cutlass_candidates_ && c < kern::cuda::gemm_cutlass_configs(); ++c) {
    const int64_t need = kern::cuda::gemm_cutlass_workspace(c, T, out, in);
    if (need < 0 || size_t(need) > cutlass_ws_bytes_) continue;
    const float us = time([&] {
      return kern::cuda::gemm_cutlass(c, W, out, in, x, T, 0.f, scratch, cutlass_ws_, cutlass_ws_bytes_, stream_);
    });
    if (us > 0) ch.cutlass_us.emplace_back(c, us);
    if (us > 0 && us < 0.97f * ch.us) ch.lt = false, ch.cutlass = c, ch.us = us;
  }
  cudaGetLastError();  // a candidate that failed to launch leaves nothing behind
  check_cuda(cudaStreamSynchronize(stream_), "tuning products");
  tuned_[Shape{out, in, T}] = ch;
  fits_.clear();
  tuning_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
}

void TunedGemm::run(int T, int out, int in, const uint16_t* W, const uint16_t* x, float beta, float* y) {
  if (cutlass_force_ >= 0 &&
      kern::cuda::gemm_cutlass(cutlass_force_, W, out, in, x, T, beta, y, cutlass_ws_, cutlass_ws_bytes_, stream_))
    return;
  auto it = tuned_.lower_bound(Shape{out, in, T});  // the same product's smallest tuned T' >= T
  const bool tuned = it != tuned_.end() && std::get<0>(it->first) == out && std::get<1>(it->first) == in;
  if (tuned && it->second.cutlass >= 0 &&
      kern::cuda::gemm_cutlass(it->second.cutlass, W, out, in, x, T, beta, y, cutlass_ws_, cutlass_ws_bytes_, stream_))
    return;
  if (tuned && it->second.lt) {
    const Shape key{out, in, T};
    auto f = fits_.find(key);
    if (f == fits_.end()) {
      bool ok = std::get<2>(it->first) == T;
      if (!ok) {
        const Layouts& l = layouts(T, out, in);
        cublasLtMatmulHeuristicResult_t r{};
        ok = cublasLtMatmulAlgoCheck(lt_, desc_, l.a, l.b, l.c, l.c, &it->second.algo, &r) == CUBLAS_STATUS_SUCCESS &&
             r.workspaceSize <= ws_bytes_;
      }
      f = fits_.emplace(key, ok).first;
    }
    if (f->second && gemm_lt(it->second.algo, T, out, in, W, x, beta, y)) return;
  }
  gemm_default(T, out, in, W, x, beta, y);
}

std::string TunedGemm::summary() const {
  int lt = 0, cutlass = 0;
  double saved = 0;
  std::map<std::string, int> configs;  // CUTLASS configuration -> shapes that chose it
  for (auto& [s, c] : tuned_) {
    if (c.lt) ++lt, saved += c.default_us - c.us;
    if (c.cutlass >= 0) ++cutlass, saved += c.default_us - c.us, ++configs[kern::cuda::gemm_cutlass_name(c.cutlass)];
  }
  std::ostringstream o;
  o << "tuned " << tuned_.size() << " product shapes in " << tuning_s_ << " s; " << lt
    << " run a cuBLASLt algorithm faster than cuBLAS's default";
  if (cutlass_candidates_) {
    o << ", " << cutlass << " a CUTLASS configuration";
    const char* sep = " (";
    for (auto& [name, n] : configs) o << sep << name << ": " << n, sep = ", ";
    if (!configs.empty()) o << ")";
  }
  o << " (" << saved << " us saved over one product of each)";
  if (cutlass_force_ >= 0)
    o << "; forced: every product that " << kern::cuda::gemm_cutlass_name(cutlass_force_) << " takes runs on it";
  return o.str();
}

std::string TunedGemm::table_jsonl() const {
  std::ostringstream o;
  for (auto& [shape, c] : tuned_) {
    const auto [out, in, T] = shape;
    o << "{\"bench\": \"serve-product-tuning\", \"out\": " << out << ", \"in\": " << in << ", \"rows\": " << T
      << ", \"default_us\": " << c.default_us << ", \"best_cublaslt_us\": " << c.best_lt_us << ", \"cutlass_us\": {";
    for (size_t i = 0; i < c.cutlass_us.size(); ++i)
      o << (i ? ", " : "") << "\"" << kern::cuda::gemm_cutlass_name(c.cutlass_us[i].first)
        << "\": " << c.cutlass_us[i].second;
    o << "}, \"chosen\": \""
      << (c.cutlass >= 0 ? kern::cuda::gemm_cutlass_name(c.cutlass) : c.lt ? "cublaslt" : "cublas default")
      << "\", \"chosen_us\": " << c.us << ", \"weight_gb_per_s\": " << double(out) * in * 2 / (double(c.us) * 1e3)
      << "}\n";
  }
  return o.str();
}

}  // namespace cw::serve
