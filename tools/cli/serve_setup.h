// Shared by the engine's commands (generate, batch, bench serve): the options every one of them takes
// (device, paging, budget) and building the backend they name.
// Must not: schedule or print (the commands do).
#pragma once
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
  void finish() { params.seed = seed; }
};

std::unique_ptr<serve::Backend> make_backend(const serve::Bundle& bundle, const EngineFlags& f);
bool cuda_engine_built();

}  // namespace cw::cli
