// Implementation of data/recut.h.
#include "data/recut.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "common/error.h"

namespace cw {

TokenStoreContents recut_documents(const TokenStoreContents& source, const RecutOptions& o) {
  check(o.docs >= 1, "recut: --docs must be at least 1 (got ", o.docs, ")");
  check(o.median >= 2 && std::isfinite(o.median), "recut: --median must be at least 2 tokens (got ", o.median, ")");
  check(o.sigma >= 0 && std::isfinite(o.sigma), "recut: --sigma must be >= 0 (got ", o.sigma, ")");
  check(o.max_len >= 2, "recut: --max-len must be at least 2 (got ", o.max_len, ")");
  const auto eos = uint32_t(source.tokenizer.eos_id);
  std::vector<uint32_t> text;  // the source's tokens without its document ends
  text.reserve(source.tokens.size());
  for (uint32_t t : source.tokens)
    if (t != eos) text.push_back(t);
  check(!text.empty(), "recut: the source store holds no tokens besides EOS");

  TokenStoreContents out;
  out.tokenizer = source.tokenizer;
  out.split = source.split;
  std::mt19937_64 rng(o.seed);
  std::lognormal_distribution<double> length(std::log(o.median), o.sigma);
  size_t next = 0;
  for (int64_t d = 0; d < o.docs; ++d) {
    const auto len = std::clamp<int64_t>(std::llround(length(rng)), 2, o.max_len);
    for (int64_t i = 0; i + 1 < len; ++i) {
      out.tokens.push_back(text[next]);
      next = next + 1 == text.size() ? 0 : next + 1;
    }
    out.tokens.push_back(eos);
    out.doc_offsets.push_back(out.tokens.size());
    out.doc_source.push_back("recut:" + std::to_string(d));
  }
  return out;
}

}  // namespace cw
