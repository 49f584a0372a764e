// Data parallelism for the trainer: every rank draws the same global batch and trains on its rows; gradients
// are summed across ranks in buckets, each launched from an autograd hook as soon as all of its parameters'
// gradients exist (so communication overlaps the rest of the backward pass); ZeRO-1 optionally gives each
// parameter's AdamW moments to one rank, which updates it and broadcasts the new values.
// Checkpoints stay unsharded (rank 0 writes them after the moments are gathered), so a run resumes on any
// number of ranks.
// Must not: read recipes or write files (the trainer decides what to save and where).
#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/batch.h"
#include "train/adamw.h"
#include "train/collectives.h"

namespace cw {

struct DataParallelOptions {
  int64_t bucket_bytes = int64_t(25) << 20;
  bool zero1 = false;
  bool reduce_bf16 = false;  // all-reduce the gradients in bf16 (half the traffic; sums rounded to bf16)
};

class DataParallel {
 public:
  DataParallel(std::unique_ptr<Collectives> comm, const std::vector<std::pair<std::string, torch::Tensor>>& params,
               DataParallelOptions opt);
  ~DataParallel();
  int rank() const { return comm_->rank(); }
  int world() const { return comm_->world(); }
  bool main() const { return rank() == 0; }

  Batch shard(const Batch& global) const;  // this rank's rows; the batch size must divide evenly
  void broadcast_parameters();             // rank 0's values everywhere
  void arm();                              // the next backward pass reduces the gradients
  void finish();                           // after it: every .grad holds the sum over ranks
  double sum(double x);                    // a scalar summed over ranks
  void sum_(torch::Tensor& t);             // a device tensor summed over ranks in place (no read-back)
  void barrier() { comm_->barrier(); }
  int num_buckets() const { return int(buckets_.size()); }

  // ZeRO-1.
  void shard_optimizer(AdamW& opt);            // keep moments only for this rank's parameters
  void broadcast_updated_parameters();         // after the optimizer step: each owner's values everywhere
  void with_full_optimizer_state(AdamW& opt, const std::function<void()>& fn);  // gathered around FN

 private:
  struct Bucket {
    std::vector<size_t> params;  // indices into params_
    std::vector<int64_t> offsets;
    torch::Tensor flat;
    size_t ready = 0;
    std::unique_ptr<Pending> pending;
  };
  void on_grad(size_t i, const torch::Tensor& g);
  void launch(Bucket& b);
  void broadcast_group(const std::vector<size_t>& idx, int root, const std::function<torch::Tensor(size_t)>& get);

  std::unique_ptr<Collectives> comm_;
  std::vector<std::pair<std::string, torch::Tensor>> params_;
  DataParallelOptions opt_;
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_, slot_in_bucket_;
  std::vector<int> owner_;
  std::vector<unsigned> hooks_;
  bool armed_ = false;
};

}  // namespace cw
