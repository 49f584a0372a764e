// Re-cutting a token store into documents of another length distribution: the source's tokens (its EOS
// markers removed) are read in order, wrapping around at the end, and cut into documents whose lengths are
// drawn from a log-normal distribution; each document ends in EOS. Throughput of length-dependent data
// strategies (dataset decomposition) depends only on document lengths, so this measures them on a corpus
// shaped like web text when only long-document manuals are at hand.
// Must not: be mistaken for real data in quality experiments (the documents' boundaries are arbitrary), or
// write anything itself (the caller writes the result with write_token_store).
#pragma once
#include <cstdint>

#include "data/token_store.h"

namespace cw {

struct RecutOptions {
  int64_t docs = 20000;     // documents to write
  double median = 512;      // median document length in tokens, EOS included
  double sigma = 1.0;       // standard deviation of the log length
  int64_t max_len = 65536;  // lengths are clamped to [2, max_len]
  uint64_t seed = 1;
};

// The re-cut store keeps SOURCE's tokenizer identity and split; document sources read "recut:<index>".
// UserError when SOURCE holds no token other than EOS or an option is out of range.
TokenStoreContents recut_documents(const TokenStoreContents& source, const RecutOptions& o);

}  // namespace cw
