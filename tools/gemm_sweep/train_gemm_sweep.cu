// chunkwise_gemm_sweep: how much a per-shape choice of cuBLASLt algorithm could save on the matrix products of
// `chunkwise bench train --config 124m|350m`. For every product of a training step (forward y = x W^T in bf16,
// input gradient dx = dy W in bf16, weight gradient dW = dy^T x in fp32, for q/k/v, o, gate/up, down and the LM
// head) it times cuBLAS's default (cublasGemmEx, what ATen's at::mm runs) and each of cuBLASLt's heuristic
// candidates, with a 32 MiB workspace and with none, each as a CUDA graph of repeated products (so the memsets
// that some algorithms issue before their kernel, and the gaps around them, count), and prints one JSON line per
// product and a total per configuration: the step's product time with the default and with the fastest
// candidate of every shape.
// Must not: link LibTorch (it measures cuBLAS alone), or be read as a correctness check (outputs are not
// compared; a chosen algorithm would go through the GPU tests before the trainer used it).
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e)), exit(1);
}
void blas_ok(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fprintf(stderr, "%s: cuBLAS status %d\n", what, int(s)), exit(1);
}

__global__ void fill_bf16(uint16_t* p, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
    const float f = (float(h & 0xffff) / 65536.f - 0.5f) * 0.2f;
    p[i] = uint16_t(__float_as_uint(f) >> 16);
  }
}

// One product in cuBLAS's column-major terms: D (m x n) = op(A) (m x k) op(B) (k x n).
struct Product {
  std::string name;  // e.g. "qkv.forward"
  int count;         // times per step
  cublasOperation_t ta, tb;
  int m, n, k;
  cudaDataType_t out;
};

// The products of one layer kind of out x in weights and rows tokens, row-major as the trainer holds them.
void add_linear(std::vector<Product>& ps, const std::string& name, int count, int rows, int out, int in) {
  // y[rows][out] = x[rows][in] W[out][in]^T: column-major y^T = W^T(op T of W's in x out) x^T.
  ps.push_back({name + ".forward", count, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, CUDA_R_16BF});
  // dx[rows][in] = dy[rows][out] W[out][in]: dx^T = W^T (in x out, as stored) dy^T.
  ps.push_back({name + ".input_grad", count, CUBLAS_OP_N, CUBLAS_OP_N, in, rows, out, CUDA_R_16BF});
  // dW[out][in] = dy^T x: dW^T (in x out) = x^T (in x rows, as stored) dy (op T of dy^T's out x rows).
  ps.push_back({name + ".weight_grad", count, CUBLAS_OP_N, CUBLAS_OP_T, in, out, rows, CUDA_R_32F});
}

struct Timer {
  cudaStream_t s;
  cudaEvent_t e0, e1;
  // Microseconds per call of F, replayed as a graph of REPS calls; negative when F fails or cannot be captured.
  template <class F>
  float operator()(F&& f, int reps = 10) {
    for (int i = 0; i < 2; ++i)
      if (!f()) return cudaGetLastError(), -1.f;
    cudaGraph_t g = nullptr;
    cudaGraphExec_t ge = nullptr;
    if (cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) != cudaSuccess) return -1.f;
    bool ok = true;
    for (int i = 0; i < reps && ok; ++i) ok = f();
    if (cudaStreamEndCapture(s, &g) != cudaSuccess || !ok) {
      if (g) cudaGraphDestroy(g);
      cudaGetLastError();
      return -1.f;
    }
    cuda_ok(cudaGraphInstantiate(&ge, g, 0), "instantiating the timing graph");
    cuda_ok(cudaGraphLaunch(ge, s), "warming the graph");
    float best = 1e30f;
    for (int round = 0; round < 2; ++round) {
      cuda_ok(cudaEventRecord(e0, s), "timing");
      cuda_ok(cudaGraphLaunch(ge, s), "timing");
      cuda_ok(cudaEventRecord(e1, s), "timing");
      cuda_ok(cudaEventSynchronize(e1), "timing");
      float ms = 0;
      cuda_ok(cudaEventElapsedTime(&ms, e0, e1), "timing");
      best = ms < best ? ms : best;
    }
    cudaGraphExecDestroy(ge), cudaGraphDestroy(g);
    return best * 1e3f / reps;
  }
};

// A short description of a cuBLASLt algorithm's configuration, for the log.
std::string describe(const cublasLtMatmulAlgo_t& a) {
  int id = 0, tile = 0, splits = 0, reduction = 0, swizzle = 0, stages = 0, cluster = 0;
  size_t w = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof id, &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits, sizeof splits, &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &reduction, sizeof reduction, &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swizzle, sizeof swizzle, &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages, &w);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof cluster, &w);
  char buf[160];
  snprintf(buf, sizeof buf, "algo %d tile %d splitk %d reduction %d swizzle %d stages %d cluster %d", id, tile, splits,
           reduction, swizzle, stages, cluster);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  const int candidates = argc > 1 ? atoi(argv[1]) : 16;  // per workspace setting
  cudaStream_t s;
  cuda_ok(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
  cublasHandle_t blas;
  cublasLtHandle_t lt;
  blas_ok(cublasCreate(&blas), "cuBLAS handle"), blas_ok(cublasLtCreate(&lt), "cuBLASLt handle");
  blas_ok(cublasSetStream(blas, s), "cuBLAS stream");
  const size_t ws_bytes = size_t(32) << 20;
  void* ws = nullptr;
  cuda_ok(cudaMalloc(&ws, ws_bytes), "workspace");
  blas_ok(cublasSetWorkspace(blas, ws, ws_bytes), "cuBLAS workspace");
  Timer time{s};
  cuda_ok(cudaEventCreate(&time.e0), "event"), cuda_ok(cudaEventCreate(&time.e1), "event");

  struct Config {
    const char* name;
    int d, layers, ff, rows;
  };
  for (const Config c : {Config{"124m", 768, 12, 2048, 32 * 1024}, Config{"350m", 1024, 24, 2816, 16 * 2048}}) {
    std::vector<Product> ps;
    add_linear(ps, "qkv", c.layers, c.rows, 3 * c.d, c.d);
    add_linear(ps, "o", c.layers, c.rows, c.d, c.d);
    add_linear(ps, "gate_up", c.layers, c.rows, 2 * c.ff, c.d);
    add_linear(ps, "down", c.layers, c.rows, c.d, c.ff);
    add_linear(ps, "lm_head", 1, c.rows, 32000, c.d);
    double step_default = 0, step_best = 0, step_best_nows = 0;
    for (const Product& p : ps) {
      const int a_rows = p.ta == CUBLAS_OP_N ? p.m : p.k, a_cols = p.ta == CUBLAS_OP_N ? p.k : p.m;
      const int b_rows = p.tb == CUBLAS_OP_N ? p.k : p.n, b_cols = p.tb == CUBLAS_OP_N ? p.n : p.k;
      uint16_t *A, *B;
      void* D;
      const size_t out_size = p.out == CUDA_R_32F ? 4 : 2;
      cuda_ok(cudaMalloc(&A, size_t(a_rows) * a_cols * 2), "A");
      cuda_ok(cudaMalloc(&B, size_t(b_rows) * b_cols * 2), "B");
      cuda_ok(cudaMalloc(&D, size_t(p.m) * p.n * out_size), "D");
      fill_bf16<<<1024, 256, 0, s>>>(A, int64_t(a_rows) * a_cols, 1);
      fill_bf16<<<1024, 256, 0, s>>>(B, int64_t(b_rows) * b_cols, 2);
      const float alpha = 1, beta = 0;
      const float def = time([&] {
        return cublasGemmEx(blas, p.ta, p.tb, p.m, p.n, p.k, &alpha, A, CUDA_R_16BF, a_rows, B, CUDA_R_16BF, b_rows,
                            &beta, D, p.out, p.m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
      });
      cublasLtMatmulDesc_t desc;
      blas_ok(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "description");
      blas_ok(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &p.ta, sizeof p.ta), "transa");
      blas_ok(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &p.tb, sizeof p.tb), "transb");
      cublasLtMatrixLayout_t la, lb, ld;
      blas_ok(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, a_rows, a_cols, a_rows), "layout");
      blas_ok(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, b_rows, b_cols, b_rows), "layout");
      blas_ok(cublasLtMatrixLayoutCreate(&ld, p.out, p.m, p.n, p.m), "layout");
      float best = def, best_nows = -1, top1 = -1;
      std::string best_desc = "cublasGemmEx default", top1_desc;
      int tried = 0;
      for (const size_t limit : {ws_bytes, size_t(0)}) {
        cublasLtMatmulPreference_t pref;
        blas_ok(cublasLtMatmulPreferenceCreate(&pref), "preference");
        const uint64_t lim = limit;
        blas_ok(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &lim, sizeof lim),
                "preference");
        std::vector<cublasLtMatmulHeuristicResult_t> found(candidates);
        int n = 0;
        if (cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, ld, ld, pref, candidates, found.data(), &n) !=
            CUBLAS_STATUS_SUCCESS)
          n = 0;
        cublasLtMatmulPreferenceDestroy(pref);
        for (int i = 0; i < n; ++i) {
          if (found[i].state != CUBLAS_STATUS_SUCCESS) continue;
          ++tried;
          const float us = time([&] {
            return cublasLtMatmul(lt, desc, &alpha, A, la, B, lb, &beta, D, ld, D, ld, &found[i].algo, ws, limit, s) ==
                   CUBLAS_STATUS_SUCCESS;
          });
          if (us <= 0) continue;
          if (limit && i == 0) top1 = us, top1_desc = describe(found[i].algo);
          if (!limit && (best_nows < 0 || us < best_nows)) best_nows = us;
          if (us < best) best = us, best_desc = describe(found[i].algo) + (limit ? "" : " (no workspace)");
        }
      }
      cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(ld);
      cublasLtMatmulDescDestroy(desc);
      cudaFree(A), cudaFree(B), cudaFree(D);
      const double flops = 2.0 * p.m * p.n * p.k;
      printf("{\"bench\": \"train-gemm-sweep\", \"config\": \"%s\", \"product\": \"%s\", \"m\": %d, \"n\": %d, "
             "\"k\": %d, \"per_step\": %d, \"default_us\": %.2f, \"lt_top1_us\": %.2f, \"best_us\": %.2f, "
             "\"best_no_workspace_us\": %.2f, \"candidates\": %d, \"best\": \"%s\", \"lt_top1\": \"%s\", "
             "\"default_tflops\": %.1f, \"best_tflops\": %.1f}\n",
             c.name, p.name.c_str(), p.m, p.n, p.k, p.count, def, top1, best, best_nows, tried, best_desc.c_str(),
             top1_desc.c_str(), flops / (def * 1e6), flops / (best * 1e6));
      fflush(stdout);
      step_default += p.count * def, step_best += p.count * best,
          step_best_nows += p.count * (best_nows > 0 ? best_nows : def);
    }
    printf("{\"bench\": \"train-gemm-sweep-total\", \"config\": \"%s\", \"default_ms\": %.3f, \"best_ms\": %.3f, "
           "\"best_no_workspace_ms\": %.3f, \"saved_ms\": %.3f}\n",
           c.name, step_default / 1e3, step_best / 1e3, step_best_nows / 1e3, (step_default - step_best) / 1e3);
    fflush(stdout);
  }
  return 0;
}
