// Implementation of tools/cli/serve_setup.h.
#include "tools/cli/serve_setup.h"

#include <algorithm>
#include <cmath>
#include <sstream>

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

std::string sampling_problem(const kern::SampleParams& p, const std::function<std::string(const char*)>& name) {
  std::ostringstream why;
  if (!std::isfinite(p.temperature) || p.temperature < 0)
    why << name("temperature") << " is " << p.temperature << ": use a finite number >= 0 (0 = greedy)";
  else if (p.top_k < 0)
    why << name("top_k") << " is " << p.top_k << ": use 0 (off) or a positive count";
  else if (!(p.top_p > 0 && p.top_p <= 1))  // also NaN
    why << name("top_p") << " is " << p.top_p << ": use a number above 0 and at most 1 (1 = off)";
  return why.str();
}

std::string sampling_flags_problem(const kern::SampleParams& p) {
  return sampling_problem(p, [](const char* field) {
    std::string flag = std::string("--") + field;
    std::replace(flag.begin(), flag.end(), '_', '-');
    return flag;
  });
}

void SamplingFlags::finish() {
  check(max_new >= 1 && max_new <= kMaxNewTokens, "--max-new-tokens ", max_new, ": use 1 to ", kMaxNewTokens);
  const std::string bad = sampling_flags_problem(params);
  check(bad.empty(), bad);
  params.seed = seed;
}

void EngineFlags::finish() {
  // Bounds that keep the backends' arithmetic (pages per context, buffers) meaningful; each backend checks its own
  // limits again.
  check(page_size >= 1 && page_size <= 4096, "--page-size ", page_size, ": use 1 to 4096 tokens per KV page");
  check(kv_pages >= 0, "--kv-pages ", kv_pages, ": use 0 (sized from --kv-fraction) or a positive count");
  check(kv_fraction > 0 && kv_fraction <= 1, "--kv-fraction ", kv_fraction, ": use a share above 0 and at most 1");
  check(max_tokens >= 1, "--max-tokens ", max_tokens, ": use at least 1");
  check(max_running >= 1, "--max-running ", max_running, ": use at least 1");
  check(engine.token_budget >= 1, "--token-budget ", engine.token_budget, ": use at least 1");
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
