// Implementation of serve/prefix_groups.h.
#include "serve/prefix_groups.h"

#include <algorithm>
#include <numeric>

namespace cw::serve {

static int32_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return int32_t(i);
}

std::vector<PrefixGroup> group_by_prefix(const std::vector<std::vector<int32_t>>& prompts,
                                         const std::vector<int32_t>& max_new, int page_size) {
  std::vector<int> order(prompts.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return prompts[size_t(a)] < prompts[size_t(b)]; });
  auto aligned = [&](int32_t lcp, int32_t shortest) {  // keep at least one token of each prompt unshared
    return std::min(lcp, shortest - 1) / page_size * page_size;
  };
  std::vector<PrefixGroup> groups;
  size_t i = 0;
  while (i < order.size()) {
    PrefixGroup g;
    g.members.push_back(order[i]);
    int32_t lcp = int32_t(prompts[size_t(order[i])].size()), shortest = lcp;
    size_t j = i + 1;
    for (; j < order.size(); ++j) {
      const auto& p = prompts[size_t(order[j])];
      const int32_t l = std::min(lcp, common_prefix(prompts[size_t(order[j - 1])], p));
      const int32_t s = std::min(shortest, int32_t(p.size()));
      const int32_t now = aligned(l, s), before = g.members.size() > 1 ? aligned(lcp, shortest) : now;
      if (now < page_size || now * 2 < before) break;  // stop when sharing would shrink below half
      lcp = l, shortest = s;
      g.members.push_back(order[j]);
    }
    g.shared_len = g.members.size() > 1 ? aligned(lcp, shortest) : 0;
    std::stable_sort(g.members.begin(), g.members.end(), [&](int a, int b) {
      return double(max_new[size_t(a)]) / double(prompts[size_t(a)].size()) >
             double(max_new[size_t(b)]) / double(prompts[size_t(b)].size());
    });
    groups.push_back(std::move(g));
    i = j;
  }
  return groups;
}

}  // namespace cw::serve
