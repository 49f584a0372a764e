// Implementation of train/graphed_step.h with LibTorch's at::cuda::CUDAGraph (private memory pool).
#include "train/graphed_step.h"

#include "common/error.h"
#ifdef CHUNKWISE_CUDA
#include <ATen/autocast_mode.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace cw {

struct GraphedStep::State {
  Body body;
  std::function<void()> zero_grad;
  torch::Device device;
  int eager_left;
  torch::Tensor lr, normaliser;       // device scalars the graph reads
  std::vector<Batch> inputs;          // static copies of the captured batches
  StepTensors outputs;                // static outputs of the captured step
#ifdef CHUNKWISE_CUDA
  std::unique_ptr<at::cuda::CUDAGraph> graph;
#endif
};

bool cuda_graphs_built() {
#ifdef CHUNKWISE_CUDA
  return true;
#else
  return false;
#endif
}

GraphedStep::GraphedStep(Body body, std::function<void()> zero_grad, const torch::Device& device, int eager_steps)
    : s_(std::make_unique<State>(State{std::move(body), std::move(zero_grad), device, eager_steps, {}, {}, {}, {}})) {
  check(cuda_graphs_built() && device.is_cuda(), "CUDA graphs need a CUDA build and a CUDA device");
  check(eager_steps >= 1, "GraphedStep: at least one eager step comes before the capture");
  auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  s_->lr = torch::zeros({1}, opts);
  s_->normaliser = torch::ones({1}, opts);
}

GraphedStep::~GraphedStep() = default;

struct CaptureStreamScope::Impl {
#ifdef CHUNKWISE_CUDA
  c10::cuda::CUDAStream previous;
  c10::cuda::CUDAStreamGuard guard;
  Impl(c10::cuda::CUDAStream prev, c10::cuda::CUDAStream next) : previous(prev), guard(next) {}
#endif
};

CaptureStreamScope::CaptureStreamScope(const torch::Device& device) {
#ifdef CHUNKWISE_CUDA
  if (!device.is_cuda()) return;
  const auto index = device.index() < 0 ? c10::DeviceIndex(0) : device.index();
  auto previous = c10::cuda::getCurrentCUDAStream(index);
  auto next = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index);
  at::cuda::CUDAEvent queued;
  queued.record(previous);
  queued.block(next);
  impl_ = std::make_unique<Impl>(previous, next);
#else
  (void)device;
#endif
}

CaptureStreamScope::~CaptureStreamScope() {
#ifdef CHUNKWISE_CUDA
  if (!impl_) return;
  at::cuda::CUDAEvent done;
  done.record(c10::cuda::getCurrentCUDAStream(impl_->previous.device_index()));
  done.block(impl_->previous);
#endif
}

bool GraphedStep::captured() const {
#ifdef CHUNKWISE_CUDA
  return s_->graph != nullptr;
#else
  return false;
#endif
}

bool GraphedStep::graphable(const std::vector<Batch>& batches) const {
  for (auto& b : batches)
    if (b.has_segments) return false;
  if (!captured()) return true;
  if (batches.size() != s_->inputs.size()) return false;
  for (size_t i = 0; i < batches.size(); ++i)
    if (batches[i].tokens.sizes() != s_->inputs[i].tokens.sizes()) return false;
  return true;
}

StepTensors GraphedStep::run(const std::vector<Batch>& batches, double lr, int64_t normaliser) {
  check(graphable(batches), "GraphedStep::run: these batches do not fit the captured graph");
  s_->lr.fill_(lr);
  s_->normaliser.fill_(double(normaliser));
  if (s_->eager_left > 0) {  // warm-up: real steps, run eagerly
    --s_->eager_left;
    s_->zero_grad();
    return s_->body(batches, s_->lr, s_->normaliser);
  }
#ifdef CHUNKWISE_CUDA
  if (!s_->graph) {
    check(at::cuda::getCurrentCUDAStream(s_->device.index()) != at::cuda::getDefaultCUDAStream(s_->device.index()),
          "CUDA graph capture needs a stream other than the default one");
    for (auto& b : batches) {
      Batch in = b;
      in.tokens = b.tokens.clone(), in.targets = b.targets.clone(), in.positions = b.positions.clone();
      s_->inputs.push_back(in);
    }
    s_->zero_grad();  // the gradients the capture allocates become the graph's
    const bool cache = at::autocast::is_autocast_cache_enabled();
    at::autocast::set_autocast_cache_enabled(false);  // no cast cached across the capture's boundary
    s_->graph = std::make_unique<at::cuda::CUDAGraph>();
    s_->graph->capture_begin();
    try {
      s_->outputs = s_->body(s_->inputs, s_->lr, s_->normaliser);
    } catch (...) {
      s_->graph->capture_end();
      at::autocast::set_autocast_cache_enabled(cache);
      throw;
    }
    s_->graph->capture_end();
    at::autocast::set_autocast_cache_enabled(cache);
    s_->graph->replay();  // capturing ran nothing: this step runs now
    return s_->outputs;
  }
  for (size_t i = 0; i < batches.size(); ++i) {
    s_->inputs[i].tokens.copy_(batches[i].tokens, /*non_blocking=*/true);
    s_->inputs[i].targets.copy_(batches[i].targets, /*non_blocking=*/true);
    s_->inputs[i].positions.copy_(batches[i].positions, /*non_blocking=*/true);
  }
  s_->graph->replay();
  return s_->outputs;
#else
  fail("CUDA graphs need a CUDA build");
#endif
}

}  // namespace cw
