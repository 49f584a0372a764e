// CPU reference of kernels/embedding: gathers token rows of the embedding table.
#include <algorithm>

#include "kernels/reference.h"

namespace cw::kern::ref {

void embedding(const float* table, const int32_t* tokens, int T, int d, float* x) {
  for (int t = 0; t < T; ++t) std::copy(table + int64_t(tokens[t]) * d, table + int64_t(tokens[t] + 1) * d, x + int64_t(t) * d);
}

}  // namespace cw::kern::ref
