// Variable sequence length sampler over a decomposition: every step takes b_k = tokens_per_step / 2^k
// sequences from one bucket k, so B x T changes while tokens per step stay constant.
// One epoch = C cycles. Each bucket's pieces (shuffled per epoch) are dealt into C equal parts; cycle c
// uses part c, so every cycle keeps the natural length distribution and every piece is used once per epoch.
// Inside a cycle, the next bucket is drawn with probability proportional to (batches it has left in the
// cycle) x (its curriculum odds): high-odds buckets drain first (Grow-P2: short -> long within each cycle).
// The draw depends only on (seed, epoch, cycle, step in cycle), so all data-parallel ranks pick the same
// bucket, and the state (epoch, cycle, batches used per bucket) restores the exact sequence of batches.
// Must not: mix lengths inside one batch.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "data/batch.h"
#include "data/decompose.h"

namespace cw {

// Curriculum odds for buckets kmin..kmax: uniform, grow_linear, grow_p2, shrink_linear, shrink_p2.
std::vector<double> curriculum_odds(const std::string& name, int kmin, int kmax);

struct DDSamplerOptions {
  int64_t tokens_per_step = 1 << 16;  // per rank; must be a multiple of 2^kmax
  std::string curriculum = "grow_p2";
  int64_t cycles = 8;
  uint64_t seed = 1;
  int64_t rank = 0, world = 1;
};

class DDSampler : public Sampler {
 public:
  DDSampler(std::shared_ptr<const std::vector<uint32_t>> tokens, Decomposition d, DDSamplerOptions opt);
  Batch next() override;
  std::string state() const override;
  void restore(const std::string& state) override;
  int last_k() const { return last_k_; }
  int64_t batches_per_epoch() const;
  int64_t batch_size_for(int k) const { return opt_.tokens_per_step >> k; }
  // Global piece indices (into the bucket) of the last batch, this rank's rows.
  const std::vector<uint64_t>& last_pieces() const { return last_pieces_; }

 private:
  void start_epoch();
  int64_t quota(int k) const;  // batches bucket k offers in the current cycle
  std::shared_ptr<const std::vector<uint32_t>> tokens_;
  Decomposition d_;
  DDSamplerOptions opt_;
  std::vector<double> odds_;
  std::vector<std::vector<uint32_t>> order_;  // per bucket: shuffled piece indices of this epoch
  int64_t epoch_ = 0, cycle_ = 0, step_in_cycle_ = 0;
  std::vector<int64_t> used_;  // batches taken per bucket in this cycle
  int last_k_ = -1;
  std::vector<uint64_t> last_pieces_;
};

}  // namespace cw
