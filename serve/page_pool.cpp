// Implementation of serve/page_pool.h, and StepPlan's checks (serve/plan.h).
#include "serve/page_pool.h"

#include <stdexcept>
#include <string>

#include "serve/plan.h"

namespace cw::serve {

PagePool::PagePool(int num_pages) : capacity_(num_pages - 1) {
  if (num_pages < 2) throw std::logic_error("page pool needs at least 2 pages");
  for (int p = num_pages - 1; p >= 1; --p) free_.push_back(p);
}

bool PagePool::allocate(int n, std::vector<int32_t>& into) {
  if (n > int(free_.size())) return false;
  for (int i = 0; i < n; ++i) into.push_back(free_.back()), free_.pop_back();
  return true;
}

void PagePool::release(std::vector<int32_t>& pages) {
  for (int32_t p : pages) free_.push_back(p);
  pages.clear();
}

bool StepPlan::decode_only() const {
  if (levels.size() != 1 || int(levels[0].size()) != rows() || int(sample_rows.size()) != rows()) return false;
  for (int r = 0; r < rows(); ++r)
    if (sample_rows[size_t(r)] != r) return false;
  return true;
}

void StepPlan::validate(int page_size, int num_pages) const {
  auto bad = [](const std::string& why) { throw std::logic_error("malformed step plan: " + why); };
  const int T = rows();
  if (positions.size() != size_t(T) || slots.size() != size_t(T)) bad("row arrays differ in length");
  if (levels.empty()) bad("no attention level");
  for (const auto& level : levels) {
    int next = 0;
    for (const auto& it : level) {
      if (it.q_begin != next || it.q_end <= it.q_begin) bad("items do not cover the rows in order");
      next = it.q_end;
      if (int64_t(it.pages.size()) * page_size < it.kv_len) bad("an item lists fewer pages than its kv_len");
      for (int32_t p : it.pages)
        if (p < 0 || p >= num_pages) bad("page id out of range");
    }
    if (next != T) bad("items do not reach the last row");
  }
  if (sample_rows.size() != sample_params.size()) bad("sample rows and parameters differ in length");
  for (int32_t r : sample_rows)
    if (r < 0 || r >= T) bad("sample row out of range");
  for (int32_t s : slots)
    if (s < 0 || s >= num_pages * page_size) bad("slot out of range");
}

}  // namespace cw::serve
