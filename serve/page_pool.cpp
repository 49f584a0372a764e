// Implementation of serve/page_pool.h.
#include "serve/page_pool.h"

#include <stdexcept>
#include <string>

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

}  // namespace cw::serve
