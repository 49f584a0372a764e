// Static unstructured sparsity for sparse pre-training (SPDF). Every >= 2-D weight except embeddings and
// the LM head gets a random mask keeping exactly round((1 - level) * numel) entries (top-k of uniform noise,
// seeded). Around each optimizer step: gradients are masked before clipping and the update, then weights
// and AdamW moments are masked after it, so masked entries stay bitwise zero. Dense fine-tuning is a run
// without masks that starts from the sparse weights.
// Must not: touch norms, biases, embeddings or the LM head; or change the loop (the trainer calls the hooks).
#pragma once
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "checkpoints/tensor_io.h"
#include "train/adamw.h"

namespace cw {

bool is_sparsifiable(const std::string& name, const torch::Tensor& p);

class SparsityMasks {
 public:
  SparsityMasks() = default;  // dense: every hook is a no-op
  static SparsityMasks create(const NamedTensors& params, double level, uint64_t seed);
  // Masks saved as "mask.NAME" tensors (from a checkpoint); fails if they do not fit PARAMS.
  static SparsityMasks from_tensors(const NamedTensors& params, const std::map<std::string, torch::Tensor>& saved,
                                    const std::string& what);
  bool active() const { return !entries_.empty(); }
  void apply_to_weights() const;
  void apply_to_grads() const;
  void apply_to_optimizer(const AdamW& opt) const;
  NamedTensors tensors() const;  // "mask.NAME" (uint8 0/1) for checkpoints
  int64_t kept(const std::string& name) const;
  double density() const;  // kept entries / masked-tensor entries, over all masks

 private:
  struct Entry {
    std::string name;
    torch::Tensor param, mask;  // mask: same dtype as param, 0 or 1
  };
  std::vector<Entry> entries_;
};

// Training FLOPs per token with the spec's accounting: 3 x forward, forward = 2 (1 - s) N_sparse + 2 d V +
// 4 L n_ctx d, where N_sparse counts the sparsifiable weights.
double spdf_train_flops_per_token(double n_sparsifiable, int64_t d_model, int64_t n_layers, int64_t n_ctx,
                                  int64_t vocab, double sparsity);

}  // namespace cw
