// The CUDA backend's matrix products of more than four rows, with the algorithm for each shape chosen by
// timing: for every (rows, out, in) the backend will run, cuBLASLt's heuristic candidates and cuBLAS's default
// (cublasGemmEx) are each run on the real weights at start-up and the fastest is kept; with cutlass_candidates,
// CUTLASS's Hopper kernels too (kernels/gemv/gemm_cutlass.cu, CHUNKWISE_GEMM_CUTLASS=1 in the backend). Skinny
// products (a decode batch of 8 to 256 rows) are where the default leaves bandwidth unused. The contract is the plain
// product's: y[T][out] = beta * y + x[T][in] W[out][in]^T, bf16 inputs, fp32 accumulation and output.
// Must not: tune while a stream is being captured (tune() synchronises), or change anything but the summation
// order of the product.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace cw::serve {

class TunedGemm {
 public:
  // cutlass_candidates: also time the CUTLASS configurations (where the build has them); they and cutlass_force
  // get a workspace of their own, allocated here. cutlass_force >= 0: run every product that CUTLASS
  // configuration can take on it, whatever the timing says (for measuring a configuration in whole steps).
  TunedGemm(cublasHandle_t blas, cudaStream_t stream, void* workspace, size_t workspace_bytes,
            bool cutlass_candidates = false, int cutlass_force = -1);
  ~TunedGemm();
  TunedGemm(const TunedGemm&) = delete;
  TunedGemm& operator=(const TunedGemm&) = delete;

  // Times the candidates for T rows of the product (out, in) with weight W and input x (T rows), writing into
  // scratch (T * out floats), and keeps the fastest for every T' whose smallest tuned row count is T.
  void tune(int T, int out, int in, const uint16_t* W, const uint16_t* x, float* scratch);
  // The product with the algorithm tuned for the smallest tuned row count >= T (cuBLAS's default where none is
  // tuned or the chosen algorithm does not take T rows). Capturable in a CUDA graph.
  void run(int T, int out, int in, const uint16_t* W, const uint16_t* x, float beta, float* y);

  // For the benchmark's log: shapes tuned, how many chose a cuBLASLt algorithm or a CUTLASS configuration over
  // the default, their summed time saved per product set (microseconds), and the time tuning took.
  std::string summary() const;
  // One JSON line per tuned shape ({"bench": "serve-product-tuning", out, in, rows, the default's, the best
  // cuBLASLt algorithm's and each CUTLASS configuration's microseconds, the choice, and the weight bytes per
  // second of the choice}), for comparing the candidates on a card.
  std::string table_jsonl() const;

 private:
  using Shape = std::tuple<int, int, int>;  // out, in, T
  struct Choice {
    bool lt = false;  // false: cublasGemmEx's default (or CUTLASS)
    cublasLtMatmulAlgo_t algo{};
    int cutlass = -1;  // a CUTLASS configuration, or -1
    float us = 0, default_us = 0;
    float best_lt_us = -1;                           // the fastest cuBLASLt candidate, chosen or not
    std::vector<std::pair<int, float>> cutlass_us;  // every CUTLASS configuration timed
  };
  struct Layouts {
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  };
  const Layouts& layouts(int T, int out, int in);
  void gemm_default(int T, int out, int in, const uint16_t* W, const uint16_t* x, float beta, float* y);
  bool gemm_lt(const cublasLtMatmulAlgo_t& algo, int T, int out, int in, const uint16_t* W, const uint16_t* x,
               float beta, float* y);

  cublasHandle_t blas_;
  cublasLtHandle_t lt_ = nullptr;
  cublasLtMatmulDesc_t desc_ = nullptr;
  cudaStream_t stream_;
  void* ws_;
  size_t ws_bytes_;
  std::map<Shape, Choice> tuned_;
  std::map<Shape, Layouts> layouts_;
  std::map<Shape, bool> fits_;  // does the tuned algorithm take this T (cublasLtMatmulAlgoCheck)
  double tuning_s_ = 0;
  bool cutlass_candidates_ = false;
  int cutlass_force_ = -1;
  void* cutlass_ws_ = nullptr;  // stream-K partial sums and locks
  size_t cutlass_ws_bytes_ = 0;
};

}  // namespace cw::serve
