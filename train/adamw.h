// AdamW with decoupled weight decay, applied per named parameter so its state can be saved under the
// parameter's export name, masked (sparsity) or sharded (ZeRO-1) later. Two paths with the same arithmetic:
// a per-parameter loop of tensor ops (the reference; also what CPU training uses, so CPU resume is bitwise)
// and a multi-tensor kernel (`fused`, used on CUDA: kernels/adamw, a few launches per step, one read of p, g,
// m, v and one write of p, m, v per element; on the CPU the same element function in a loop; ATen's fused
// kernel for tensors it does not take, or with CHUNKWISE_ADAMW_ATEN=1). Tests compare them with
// torch::optim::AdamW and with each other.
// Must not: decide which parameters decay (the caller passes that per parameter).
#pragma once
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

namespace cw {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  bool fused = false;  // the multi-tensor kernel (one launch per 48 tensors instead of ~7 per parameter)
};

class AdamW {
 public:
  struct Slot {
    std::string name;
    torch::Tensor param, exp_avg, exp_avg_sq;
    bool decay;
  };
  AdamW(const std::vector<std::pair<std::string, torch::Tensor>>& params, const std::vector<bool>& decay,
        AdamWOptions opt);
  void step(double lr);  // skips parameters without a gradient
  // The same, unless SKIP (a one-element fp32 tensor on the parameters' device) holds a non-zero value: then
  // nothing changes, step count included. On the fused path the test runs on the device (no read-back).
  // GRAD_DIVISOR (optional, a one-element fp32 tensor on the device, clip_divisor): the update uses the
  // gradients divided by it (the fused kernel divides as it reads them). The gradients themselves are left
  // as they were, except on ATen's fallback kernel, which writes the divided values back.
  void step(double lr, const torch::Tensor& skip, const torch::Tensor& grad_divisor = {});
  // The learning rate as a one-element fp32 tensor on the parameters' device: the fused path reads it there
  // (so a captured CUDA graph replays each step's rate); the reference loop reads it back.
  void step(const torch::Tensor& lr, const torch::Tensor& skip, const torch::Tensor& grad_divisor = {});
  bool fused() const { return opt_.fused; }
  void zero_grad();
  int64_t steps() const;  // completed steps (reads the device's count back on the fused path)
  const std::vector<Slot>& slots() const { return slots_; }
  // "exp_avg.NAME" / "exp_avg_sq.NAME" tensors, and the step count.
  std::vector<std::pair<std::string, torch::Tensor>> state_tensors() const;
  void load_state(const std::map<std::string, torch::Tensor>& tensors, int64_t steps, const std::string& what);
  // ZeRO-1: only OWNED[i] parameters are updated and keep moments; the others' moments are freed.
  void set_owned(const std::vector<bool>& owned);
  const std::vector<bool>& owned() const { return owned_; }
  void materialize_state();  // zero moments for every slot that has none (before gathering them)
  void release_unowned();    // free them again

 private:
  void fused_step(double lr, const torch::Tensor& lr_tensor, const torch::Tensor& skip,
                  const torch::Tensor& grad_divisor);
  std::vector<Slot> slots_;
  bool updates(size_t i) const { return owned_.empty() || owned_[i]; }
  AdamWOptions opt_;
  std::vector<bool> owned_;  // empty: every slot
  int64_t steps_ = 0;          // the count while step_tensor_ does not hold it
  torch::Tensor step_tensor_;  // fused path: the step count as the kernel reads it, kept on the device
  bool device_counts_ = false;  // step_tensor_ is the count (false before the first fused step, after loads)
};

// Default policy: matrices decay; embeddings only if DECAY_EMBEDDINGS; norms and biases only if DECAY_NORMS.
bool default_weight_decay(const std::string& name, const torch::Tensor& p, bool decay_embeddings, bool decay_norms);

}  // namespace cw
