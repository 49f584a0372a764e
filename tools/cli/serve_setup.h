// Shared by the engine's commands (generate, batch, bench serve): the options every one of them takes
// (device, paging, budget) and building the backend they name.
// Must not: schedule or print (the commands do).
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "serve/bundle.h"
#include "serve/engine.h"
#include "serve/plan.h"
#include "tools/cli/options.h"

namespace cw::cli {

struct EngineFlags {
  std::string device = "auto";
  int page_size = 16, kv_pages = 0, max_tokens = 2048, max_running = 256;
  double kv_fraction = 0.6;
  bool no_graphs = false, no_graph_mixed = false;
  serve::EngineOptions engine;
  std::string chunked = "on", sharing = "off";
  void add_to(po::options_description& desc);
  void finish();  // reads chunked/sharing into engine; UserError on bad values
};

// --max-new-tokens, --temperature, --top-k, --top-p, --seed (call finish() after parsing).
struct SamplingFlags {
  int32_t max_new = 64;
  uint64_t seed = 1;
  kern::SampleParams params;
  void add_to(po::options_description& desc);
  void finish();  // UserError on values out of range
};

// The ranges of the sampling settings, shared by the flags and by batch's per-request fields: empty when P is
// valid, else what is wrong with the first bad setting, named by NAME("temperature" | "top_k" | "top_p").
// temperature: finite, >= 0 (0 = greedy); top_k: >= 0 (0 = off); top_p: in (0, 1] (1 = off).
std::string sampling_problem(const kern::SampleParams& p, const std::function<std::string(const char*)>& name);
std::string sampling_flags_problem(const kern::SampleParams& p);  // the same, naming the flags (--top-p)
constexpr int32_t kMaxNewTokens = 1 << 20;  // the most tokens one request may ask for

std::unique_ptr<serve::Backend> make_backend(const serve::Bundle& bundle, const EngineFlags& f);
bool cuda_engine_built();

}  // namespace cw::cli
