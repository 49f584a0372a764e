// Global prefix sharing for offline batch jobs (BatchLLM): sort the prompts so shared prefixes sit together
// (the order of a prefix tree's leaves), cut them into groups whose common prefix spans at least one KV page,
// and order each group's members with the larger decode/prompt ratio first.
// Must not: touch KV memory or run anything (the engine turns groups into shared pages and cascade attention).
#pragma once
#include <cstdint>
#include <vector>

namespace cw::serve {

struct PrefixGroup {
  std::vector<int> members;  // indices into the batch, in scheduling order
  int32_t shared_len = 0;    // page-aligned; 0 = no sharing; always < every member's prompt length
};

// PROMPTS and MAX_NEW are per request. Requests without a shareable prefix come back as one-member groups.
std::vector<PrefixGroup> group_by_prefix(const std::vector<std::vector<int32_t>>& prompts,
                                         const std::vector<int32_t>& max_new, int page_size);

}  // namespace cw::serve
