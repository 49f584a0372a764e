// A training step (forward and backward over the micro-batches, clipping, AdamW) captured once in a CUDA
// graph and replayed: the host launches one graph instead of a couple of thousand kernels, and the GPU runs
// them without the gaps between separately launched kernels. The first steps run eagerly (they warm up
// cuBLAS, cuDNN and the allocator), the next is captured and replayed; after that every step copies its
// batches into static buffers, sets the learning rate and loss normaliser (device scalars) and replays.
// The body must read everything that changes per step from its arguments, never sync with the host, and
// leave the gradients in place (the graph owns them once captured).
// Must not: be used with data-parallel hooks, document masks, or batches whose shapes change (graphable()
// says whether this step's batches fit; the caller runs such steps eagerly).
#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <vector>

#include "data/batch.h"
#include "train/train_step.h"

namespace cw {

class GraphedStep {
 public:
  // BODY(batches, lr, normaliser): one step; lr and normaliser are one-element fp32 device tensors.
  using Body = std::function<StepTensors(const std::vector<Batch>&, const torch::Tensor&, const torch::Tensor&)>;
  // EAGER_STEPS >= 1 steps run eagerly first (the optimizer's device state is created there, not in the graph).
  GraphedStep(Body body, std::function<void()> zero_grad, const torch::Device& device, int eager_steps = 3);
  ~GraphedStep();
  // True when BATCHES can run through the graph (shapes as captured, or not captured yet; no segments).
  bool graphable(const std::vector<Batch>& batches) const;
  // Runs one step on the current stream (which must not be the legacy default stream: capture needs its own).
  // The returned tensors are overwritten by the next call.
  StepTensors run(const std::vector<Batch>& batches, double lr, int64_t normaliser);
  bool captured() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

// True when this build can capture CUDA graphs (a CUDA build).
bool cuda_graphs_built();

// While alive, a stream from LibTorch's pool is the current one on DEVICE (capture cannot use the default
// stream), ordered after the work queued on the previous stream; on exit the previous stream waits for it.
// Does nothing for other devices.
class CaptureStreamScope {
 public:
  explicit CaptureStreamScope(const torch::Device& device);
  ~CaptureStreamScope();
  CaptureStreamScope(const CaptureStreamScope&) = delete;
  CaptureStreamScope& operator=(const CaptureStreamScope&) = delete;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cw
