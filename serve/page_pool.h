// The KV page pool of the engine: hands out page ids 1..n-1 (0 is the backends' scratch page) and takes
// them back. Pure bookkeeping; the pages' memory lives in the backend.
// Must not: know about sequences or groups (the engine decides who owns what).
#pragma once
#include <cstdint>
#include <vector>

namespace cw::serve {

class PagePool {
 public:
  explicit PagePool(int num_pages);
  int free_pages() const { return int(free_.size()); }
  int capacity() const { return capacity_; }
  bool allocate(int n, std::vector<int32_t>& into);  // all or nothing
  void release(std::vector<int32_t>& pages);         // clears PAGES

 private:
  std::vector<int32_t> free_;
  int capacity_;
};

}  // namespace cw::serve
