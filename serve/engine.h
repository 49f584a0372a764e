// The engine's scheduler: continuous batching with one token budget per iteration (Sarathi-Serve order:
// every running decode first, then partial prefills, then admissions while KV pages can be reserved), chunked
// prefill, pre-emption by recompute when the page pool runs dry, and for batch jobs global prefix sharing
// (a shared prefix is computed once into shared pages and attended through cascade attention).
// Must not: compute anything itself (backends run the plans) or depend on the backend's kind.
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "serve/page_pool.h"
#include "serve/plan.h"

namespace cw::serve {

struct EngineOptions {
  int token_budget = 512;       // rows per iteration, decodes included
  int max_running = 256;        // sequences holding KV pages at once
  bool chunked_prefill = true;  // false: prefill-first (whole prompts in their own iterations, decodes wait)
  bool prefix_sharing = false;  // submit_batch: compute shared prompt prefixes once
  bool cascade = true;          // with sharing: attend the shared prefix once per group (false: flat attention)
};

struct GenRequest {
  int64_t id = 0;
  std::vector<int32_t> prompt;
  int32_t max_new_tokens = 64;
  kern::SampleParams sampling;  // counter is set by the engine (the index of the token being drawn)
  int32_t eos_id = -1;          // -1: never stop early
};

struct GenResult {
  int64_t id = 0;
  int32_t prompt_tokens = 0;
  std::vector<int32_t> tokens;     // generated (the end-of-sequence token is not included)
  std::string finish_reason;       // length | eos | context
  int preemptions = 0;
  double submit_time = 0;          // seconds on the engine's clock
  std::vector<double> token_times;  // when each generated token was ready
};

struct StepStats {
  int decode_rows = 0, prefill_rows = 0, preemptions = 0, running = 0, waiting = 0;
  double seconds = 0;
};

class Engine {
 public:
  using TokenCallback = std::function<void(int64_t id, int32_t token)>;
  Engine(Backend& backend, EngineOptions opt);
  ~Engine();
  void submit(GenRequest r);                      // first come, first served
  void submit_batch(std::vector<GenRequest> batch);  // grouped by shared prefix when prefix_sharing is on
  bool idle() const { return waiting_.empty() && running_.empty(); }
  StepStats step(const TokenCallback& on_token = {});
  // Rows of the iterations from the next step on (a caller may move it between steps, e.g. a benchmark that
  // starts its decoders with a large budget and then measures at the budget under test). UserError below 1.
  void set_token_budget(int budget);
  std::vector<GenResult> run(const TokenCallback& on_token = {});  // steps until idle; results by finish time
  std::vector<GenResult> take_finished();
  const PagePool& pool() const { return pool_; }
  double now() const;  // the engine's clock (seconds since construction)
  int64_t prefix_tokens_shared() const { return shared_tokens_saved_; }

  struct Group;
  struct Seq;

 private:
  struct Chunk;
  void admit_checks(const GenRequest& r) const;
  Seq* preempt_one();  // the latest admitted sequence back to the queue (recomputed later); null if none
  void finish(Seq& s, const std::string& reason);
  StepPlan build_plan(std::vector<Chunk>& chunks) const;

  Backend& backend_;
  EngineOptions opt_;
  PagePool pool_;
  std::deque<std::unique_ptr<Seq>> waiting_;
  std::vector<std::unique_ptr<Seq>> running_;
  std::vector<GenResult> finished_;
  int64_t admitted_ = 0, groups_made_ = 0, shared_tokens_saved_ = 0;
  double epoch_;
};

}  // namespace cw::serve
