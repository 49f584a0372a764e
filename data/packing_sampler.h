// Best-fit packing with document masking: documents are cut into chunks of at most T tokens, chunks are
// packed into rows of T by best-fit decreasing, and each row carries segment ids (attention stays inside a
// chunk) and positions restarting at 0 per chunk. A document's last token has no target; padding has no
// target and its own segment. Rows are rebuilt and shuffled per epoch from (seed, epoch); the state is
// (epoch, cursor).
// Must not: let one document's tokens attend to another's.
#pragma once
#include <memory>
#include <vector>

#include "data/batch.h"

namespace cw {

struct PackingOptions {
  int64_t seq_len = 256, batch_size = 16;
  uint64_t seed = 1;
  int64_t rank = 0, world = 1;
};

class PackingSampler : public Sampler {
 public:
  // LOSS_BEGIN (empty, or one per document): tokens before doc start + LOSS_BEGIN[d] are context only, never
  // targets (supervised fine-tuning: the prompt; data/sft_store.h).
  PackingSampler(std::shared_ptr<const std::vector<uint32_t>> tokens, std::vector<uint64_t> doc_offsets,
                 PackingOptions opt, std::vector<uint64_t> loss_begin = {});
  Batch next() override;
  std::string state() const override;
  void restore(const std::string& state) override;
  int64_t rows_per_epoch() const { return int64_t(rows_.size()); }
  double fill() const;  // fraction of row positions holding tokens

 private:
  struct Chunk {
    uint64_t begin, end;  // token range; the document ends at doc_end
    uint64_t doc_end;
    uint64_t loss_from;  // the first token that is a target
  };
  void build_rows();
  std::shared_ptr<const std::vector<uint32_t>> tokens_;
  std::vector<uint64_t> offsets_, loss_begin_;
  PackingOptions opt_;
  std::vector<std::vector<Chunk>> rows_;
  int64_t epoch_ = 0, cursor_ = 0;
};

}  // namespace cw
