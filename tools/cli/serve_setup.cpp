// Implementation of tools/cli/serve_setup.h.
#include "tools/cli/serve_setup.h"

#include "serve/cpu_backend.h"
#ifdef CHUNKWISE_SERVE_CUDA
#include <cuda_runtime_api.h>

#include "serve/cuda_backend.h"
#endif

namespace cw::cli {

bool cuda_engine_built() {
#ifdef CHUNKWISE_SERVE_CUDA
  return true;
#else
  return false;
#endif
}

void EngineFlags::add_to(po::options_description& desc) {
  desc.add_options()("device", po::value(&device)->default_value("auto"), "auto | cpu | cuda")(
      "page-size", po::value(&page_size)->default_value(16), "tokens per KV page")(
      "kv-pages", po::value(&kv_pages)->default_value(0), "KV pages (0: --kv-fraction of free GPU memory; CPU: 16 full contexts)")(
      "kv-fraction", po::value(&kv_fraction)->default_value(0.6, "0.6"), "share of free GPU memory for KV pages")(
      "token-budget", po::value(&engine.token_budget)->default_value(512), "rows per iteration, decodes included")(
      "max-running", po::value(&max_running)->default_value(256), "sequences holding KV pages at once")(
      "max-tokens", po::value(&max_tokens)->default_value(2048), "most rows one iteration may hold (buffers)")(
      "chunked-prefill", po::value(&chunked)->default_value("on"), "on | off (off: prefill-first)")(
      "prefix-sharing", po::value(&sharing)->default_value("off"), "off | on | flat (on: cascade attention)")(
      "no-cuda-graphs", po::bool_switch(&no_graphs), "run every step without CUDA graphs")(
      "no-graph-mixed-steps", po::bool_switch(&no_graph_mixed),
      "run steps of chunks beside decodes as plain launches, unpadded (decode-only steps keep their graphs)");
}

void SamplingFlags::add_to(po::options_description& desc) {
  desc.add_options()("max-new-tokens", po::value(&max_new)->default_value(64), "tokens to generate")(
      "temperature", po::value(&params.temperature)->default_value(0.f, "0"), "0 = greedy")(
      "top-k", po::value(&params.top_k)->default_value(0), "0 = off")(
      "top-p", po::value(&params.top_p)->default_value(1.f, "1"), "1 = off")(
      "seed", po::value(&seed)->default_value(1), "sampling seed");
}

void EngineFlags::finish() {
  check(chunked == "on" || chunked == "off", "--chunked-prefill ", chunked, ": use on or off");
  check(sharing == "on" || sharing == "off" || sharing == "flat", "--prefix-sharing ", sharing, ": use off, on or flat");
  check(device == "auto" || device == "cpu" || device == "cuda", "--device ", device, ": use auto, cpu or cuda");
  engine.chunked_prefill = chunked == "on";
  engine.prefix_sharing = sharing != "off";
  engine.cascade = sharing == "on";
  engine.max_running = max_running;
  engine.token_budget = std::min(engine.token_budget, max_tokens);
  if (device == "auto") {
    device = "cpu";
#ifdef CHUNKWISE_SERVE_CUDA
    int n = 0;
    if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0) device = "cuda";
#endif
  }
}

std::unique_ptr<serve::Backend> make_backend(const serve::Bundle& bundle, const EngineFlags& f) {
  if (f.device == "cuda") {
#ifdef CHUNKWISE_SERVE_CUDA
    serve::CudaBackendOptions o;
    o.page_size = f.page_size, o.num_pages = f.kv_pages, o.kv_fraction = f.kv_fraction;
    o.max_tokens = f.max_tokens, o.max_sample_rows = std::min(f.max_running, f.max_tokens);
    o.cuda_graphs = !f.no_graphs, o.graph_mixed_steps = !f.no_graph_mixed;
    return std::make_unique<serve::CudaBackend>(bundle, o);
#else
    fail("--device cuda: this chunkwise was built without CUDA (configure with -DCHUNKWISE_CUDA=ON)");
#endif
  }
  serve::CpuBackendOptions o;
  o.page_size = f.page_size;
  o.num_pages = f.kv_pages > 0 ? f.kv_pages
                               : int(16 * ((bundle.config.max_seq_len + f.page_size - 1) / f.page_size) + 1);
  o.max_tokens = f.max_tokens;
  return std::make_unique<serve::CpuBackend>(bundle, o);
}

}  // namespace cw::cli
