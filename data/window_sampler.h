// Concatenate-and-chunk: the store's token stream (documents already end in EOS) cut into windows of
// T + 1 tokens at stride T; each epoch visits the windows in a seeded permutation. With WORLD ranks, the
// permutation is dealt out in rounds of WORLD windows and rank r takes the r-th of each round, so ranks
// never share a window.
// State = (seed, epoch, cursor): restoring it continues the exact same batches.
// Must not: read files (it borrows the tokens) or use any global random generator.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "data/batch.h"

namespace cw {

// A batch of B rows from WINDOWS ([B, T + 1] ids): inputs, targets shifted by one, positions 0..T-1.
Batch batch_from_windows(const torch::Tensor& windows);

struct WindowSamplerOptions {
  int64_t seq_len = 256;
  int64_t batch_size = 16;
  uint64_t seed = 1;
  bool shuffle = true;  // false: windows in order (evaluation)
  int64_t rank = 0, world = 1;
};

class WindowSampler : public Sampler {
 public:
  WindowSampler(std::shared_ptr<const std::vector<uint32_t>> tokens, WindowSamplerOptions opt);
  Batch next() override;
  void next_window(int64_t* dst);  // this rank's next window: T + 1 token ids
  std::string state() const override;
  void restore(const std::string& state) override;
  int64_t windows_per_epoch() const { return n_windows_; }
  int64_t batches_per_epoch() const { return n_windows_ / (opt_.batch_size * opt_.world); }
  int64_t seq_len() const { return opt_.seq_len; }
  int64_t epoch() const { return epoch_; }

 private:
  void build_order();
  std::shared_ptr<const std::vector<uint32_t>> tokens_;
  WindowSamplerOptions opt_;
  int64_t n_windows_ = 0, epoch_ = 0, cursor_ = 0;
  std::vector<int64_t> order_;
};

}  // namespace cw
