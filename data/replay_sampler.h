// Replay for continual pre-training: every row of every batch comes from the old data (the replay store)
// with probability `fraction`, else from the new data. The draw for row i is a hash of (seed, rank, i),
// so the mix is deterministic, independent of timing, and resumable: the state is the two samplers'
// states plus the row counter.
// Must not: change the batch shape or the tokens per step.
#pragma once
#include <memory>

#include "data/window_sampler.h"

namespace cw {

class ReplaySampler : public Sampler {
 public:
  ReplaySampler(std::unique_ptr<WindowSampler> fresh, std::unique_ptr<WindowSampler> replay, double fraction,
                int64_t batch_size, uint64_t seed, int64_t rank = 0);
  Batch next() override;
  std::string state() const override;
  void restore(const std::string& state) override;
  int64_t replayed_rows() const { return replayed_; }  // rows drawn from the replay store so far
  int64_t rows() const { return rows_; }
  bool last_row_replayed(int64_t b) const { return last_[size_t(b)]; }

 private:
  bool draw(int64_t row) const;
  std::unique_ptr<WindowSampler> fresh_, replay_;
  double fraction_;
  int64_t batch_size_, rank_;
  uint64_t seed_;
  int64_t rows_ = 0, replayed_ = 0;
  std::vector<bool> last_;
};

}  // namespace cw
