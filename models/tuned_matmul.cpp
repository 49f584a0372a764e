// Implementation of models/tuned_matmul.h: the row-major product mapped onto cuBLASLt's column-major one, a
// timing of the candidates at a shape's first eager product, and the choice replayed after.
#include "models/tuned_matmul.h"

#include <memory>
#include <map>
#include <mutex>
#include <sstream>
#include <tuple>
#include <vector>

#include "common/env.h"
#include "common/error.h"

#ifdef CHUNKWISE_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cublasLt.h>

#include "kernels/common/time_calls.h"
#endif

namespace cw {

namespace {

EnvSwitch g_enabled("CHUNKWISE_TUNED_PRODUCTS", false);

}  // namespace

bool tuned_products_enabled() { return g_enabled.on(); }
void set_tuned_products(bool on) { g_enabled.set(on); }

namespace {

torch::Tensor reference_mm(const torch::Tensor& a, const torch::Tensor& b, std::optional<torch::ScalarType> out) {
  if (!out || *out == a.scalar_type()) return at::mm(a, b);
  if (a.is_cuda() && *out == torch::kFloat32) return at::mm(a, b, *out);
  return at::mm(a, b).to(*out);
}

#ifdef CHUNKWISE_CUDA

// One operand as cuBLAS sees it: a column-major matrix (rows x cols, leading dimension ld) holding either the
// tensor X or its transpose.
struct Operand {
  bool holds_transpose = false;  // row-major X: the column-major matrix is X^T
  int64_t rows = 0, cols = 0, ld = 0;
};

// A row-major X [r, c] with row stride s >= c is, column-major, X^T (c x r, ld s). The transpose of a row-major
// tensor (stride(0) == 1, stride(1) = s >= r) is, column-major, X itself (r x c, ld s). Anything else, or a
// leading dimension or pointer that cuBLASLt's 16-byte-aligned candidates would not take: nullopt.
std::optional<Operand> as_column_major(const torch::Tensor& x) {
  const int64_t r = x.size(0), c = x.size(1);
  Operand o;
  if (x.stride(1) == 1 && x.stride(0) >= std::max<int64_t>(1, c))
    o.holds_transpose = true, o.rows = c, o.cols = r, o.ld = x.stride(0);
  else if (x.stride(0) == 1 && x.stride(1) >= std::max<int64_t>(1, r))
    o.holds_transpose = false, o.rows = r, o.cols = c, o.ld = x.stride(1);
  else
    return std::nullopt;
  if (o.ld % 8 != 0 || reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 != 0) return std::nullopt;
  return o;
}

void check_lt(cublasStatus_t s, const char* what) {
  check(s == CUBLAS_STATUS_SUCCESS, "tuned_mm: ", what, ": cuBLASLt status ", int(s));
}

// cuBLASLt's description of one product shape.
struct LtProduct {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  // C [M, N] (row-major) = A [M, K] · B [K, N] is, column-major, C^T (N x M) = B^T A^T: cuBLAS's first operand
  // is b, its second a, each taken as stored where that already is its transpose; m = N, n = M, k = K.
  LtProduct(const Operand& ob, const Operand& oa, int64_t M, int64_t N, cudaDataType_t out) {
    check_lt(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "product description");
    const cublasOperation_t ta = ob.holds_transpose ? CUBLAS_OP_N : CUBLAS_OP_T;
    const cublasOperation_t tb = oa.holds_transpose ? CUBLAS_OP_N : CUBLAS_OP_T;
    check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "transpose");
    check_lt(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "transpose");
    check_lt(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, ob.rows, ob.cols, ob.ld), "layout");
    check_lt(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, oa.rows, oa.cols, oa.ld), "layout");
    check_lt(cublasLtMatrixLayoutCreate(&ld, out, N, M, N), "layout");
  }
  LtProduct(const LtProduct&) = delete;
  LtProduct& operator=(const LtProduct&) = delete;
  ~LtProduct() {
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

// The product's key: cuBLAS's m, n, k, whether each operand is stored as its transpose, their leading
// dimensions, the output dtype, the device.
using Key = std::tuple<int64_t, int64_t, int64_t, bool, bool, int64_t, int64_t, int, int>;

struct Choice {
  std::shared_ptr<LtProduct> product;
  bool lt = false;  // false: at::mm
  cublasLtMatmulAlgo_t algo{};
  float us = 0, default_us = 0;
  int candidates = 0;
};

std::mutex g_mutex;
std::map<Key, Choice> g_choices;

bool run_lt(const LtProduct& p, const cublasLtMatmulAlgo_t& algo, const torch::Tensor& a, const torch::Tensor& b,
            torch::Tensor& c, cudaStream_t stream) {
  const float alpha = 1, beta = 0;
  return cublasLtMatmul(at::cuda::getCurrentCUDABlasLtHandle(), p.desc, &alpha, b.data_ptr(), p.la, a.data_ptr(), p.lb,
                        &beta, c.data_ptr(), p.ld, c.data_ptr(), p.ld, &algo, at::cuda::getCUDABlasLtWorkspace(),
                        at::cuda::getCUDABlasLtWorkspaceSize(), stream) == CUBLAS_STATUS_SUCCESS;
}

bool capturing(cudaStream_t s) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  return cudaStreamIsCapturing(s, &status) != cudaSuccess || status != cudaStreamCaptureStatusNone;
}

// Times at::mm and cuBLASLt's heuristic candidates (16 at most, 16-byte alignment, ATen's cuBLASLt workspace)
// on the operands themselves, writing into C; keeps a candidate only if it beats at::mm by 2 %.
Choice tune(std::shared_ptr<LtProduct> p, const torch::Tensor& a, const torch::Tensor& b,
            std::optional<torch::ScalarType> out, torch::Tensor& c, cudaStream_t stream) {
  Choice ch;
  ch.product = std::move(p);
  ch.default_us = ch.us = kern::cuda::time_calls_us([&] { return reference_mm(a, b, out).defined(); }, stream, 5);
  cublasLtMatmulPreference_t pref = nullptr;
  check_lt(cublasLtMatmulPreferenceCreate(&pref), "preference");
  const uint64_t ws = at::cuda::getCUDABlasLtWorkspaceSize();
  const uint32_t align = 16;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
    cublasLtMatmulPreferenceSetAttribute(pref, attr, &align, sizeof align);
  const LtProduct& lp = *ch.product;
  cublasLtMatmulHeuristicResult_t found[16];
  int n = 0;
  if (cublasLtMatmulAlgoGetHeuristic(at::cuda::getCurrentCUDABlasLtHandle(), lp.desc, lp.la, lp.lb, lp.ld, lp.ld,
                                     pref, 16, found, &n) != CUBLAS_STATUS_SUCCESS)
    n = 0;
  cublasLtMatmulPreferenceDestroy(pref);
  for (int i = 0; i < n; ++i) {
    if (found[i].state != CUBLAS_STATUS_SUCCESS || found[i].workspaceSize > ws) continue;
    ++ch.candidates;
    const float us = kern::cuda::time_calls_us([&] { return run_lt(lp, found[i].algo, a, b, c, stream); }, stream, 5);
    if (us > 0 && us < 0.98f * ch.default_us && us < ch.us) ch.lt = true, ch.algo = found[i].algo, ch.us = us;
  }
  cudaGetLastError();  // a candidate that failed to launch leaves nothing behind
  return ch;
}

#endif  // CHUNKWISE_CUDA

}  // namespace

torch::Tensor tuned_mm(const torch::Tensor& a, const torch::Tensor& b, std::optional<torch::ScalarType> out) {
  check(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0), "tuned_mm: ", a.sizes(), " times ", b.sizes());
#ifdef CHUNKWISE_CUDA
  const auto out_dtype = out.value_or(a.scalar_type());
  if (!tuned_products_enabled() || !a.is_cuda() || a.scalar_type() != torch::kBFloat16 ||
      b.scalar_type() != torch::kBFloat16 || b.device() != a.device() ||
      (out_dtype != torch::kBFloat16 && out_dtype != torch::kFloat32) || a.numel() == 0 || b.numel() == 0)
    return reference_mm(a, b, out);
  const auto oa = as_column_major(a), ob = as_column_major(b);
  if (!oa || !ob) return reference_mm(a, b, out);
  const int64_t M = a.size(0), N = b.size(1), K = a.size(1);
  c10::cuda::CUDAGuard guard(a.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream(a.device().index()).stream();
  const Key key{N, M, K, ob->holds_transpose, oa->holds_transpose, ob->ld, oa->ld, int(out_dtype),
                int(a.device().index())};
  Choice choice;
  torch::Tensor c;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_choices.find(key);
    if (it == g_choices.end()) {
      if (capturing(stream)) return reference_mm(a, b, out);  // nothing is timed inside a capture
      c = torch::empty({M, N}, a.options().dtype(out_dtype));
      auto p = std::make_shared<LtProduct>(*ob, *oa, M, N, out_dtype == torch::kFloat32 ? CUDA_R_32F : CUDA_R_16BF);
      it = g_choices.emplace(key, tune(std::move(p), a, b, out, c, stream)).first;
    }
    choice = it->second;
  }
  if (!choice.lt) return reference_mm(a, b, out);
  if (!c.defined()) c = torch::empty({M, N}, a.options().dtype(out_dtype));
  if (run_lt(*choice.product, choice.algo, a, b, c, stream)) return c;
  return reference_mm(a, b, out);
#else
  return reference_mm(a, b, out);
#endif
}

std::string tuned_products_summary(bool jsonl) {
  std::ostringstream o;
#ifdef CHUNKWISE_CUDA
  std::lock_guard<std::mutex> lock(g_mutex);
  int lt = 0;
  double saved = 0;
  for (const auto& [key, c] : g_choices) {
    if (c.lt) ++lt, saved += c.default_us - c.us;
    if (!jsonl) continue;
    const auto& [m, n, k, a_stored_t, b_stored_t, lda, ldb, dtype, device] = key;
    o << "{\"tuned_product\": {\"m\": " << m << ", \"n\": " << n << ", \"k\": " << k << ", \"op_a\": \""
      << (a_stored_t ? "N" : "T") << "\", \"op_b\": \"" << (b_stored_t ? "N" : "T") << "\", \"out\": \""
      << (dtype == int(torch::kFloat32) ? "fp32" : "bf16") << "\", \"default_us\": " << c.default_us
      << ", \"chosen_us\": " << c.us << ", \"candidates\": " << c.candidates << ", \"chosen\": \""
      << (c.lt ? "cublaslt" : "at::mm") << "\"}}\n";
    (void)lda, (void)ldb, (void)device;
  }
  if (!jsonl)
    o << "tuned " << g_choices.size() << " product shapes; " << lt << " run a cuBLASLt candidate instead of at::mm ("
      << saved << " us saved over one product of each)";
#else
  if (!jsonl) o << "tuned products need the CUDA build";
#endif
  return o.str();
}

}  // namespace cw
