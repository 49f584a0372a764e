// Implementation of serve/plan.h: a plan's checks and the CSR form of an attention level.
#include "serve/plan.h"

#include <stdexcept>

namespace cw::serve {

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

void LevelArrays::add(int32_t rows, const std::vector<int32_t>& pages, int32_t len, int32_t pos0) {
  q_indptr.push_back(q_indptr.back() + rows);
  kv_pages.insert(kv_pages.end(), pages.begin(), pages.end());
  kv_indptr.push_back(int32_t(kv_pages.size()));
  kv_len.push_back(len), kv_pos0.push_back(pos0);
}

LevelArrays LevelArrays::from(const std::vector<AttnItem>& items) {
  LevelArrays a;
  for (const auto& it : items) a.add(it.q_end - it.q_begin, it.pages, it.kv_len, it.kv_pos0);
  return a;
}

kern::AttnLevel LevelArrays::view() const {
  kern::AttnLevel L;
  L.num_items = int(kv_len.size());
  L.q_indptr = q_indptr.data(), L.kv_indptr = kv_indptr.data(), L.kv_pages = kv_pages.data();
  L.kv_len = kv_len.data(), L.kv_pos0 = kv_pos0.data();
  return L;
}

}  // namespace cw::serve
