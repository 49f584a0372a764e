// Implementation of train/deferred_values.h: a non-blocking copy into pinned memory and a CUDA event per push.
#include "train/deferred_values.h"

#include "common/error.h"
#ifdef CHUNKWISE_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#endif

namespace cw {

struct DeferredValues::Item {
  torch::Tensor host;  // pinned when the values live on a CUDA device
#ifdef CHUNKWISE_CUDA
  at::cuda::CUDAEvent copied;
#endif
};

DeferredValues::DeferredValues() = default;
DeferredValues::~DeferredValues() = default;

void DeferredValues::push(const torch::Tensor& values) {
  auto item = std::make_unique<Item>();
  auto v = values.detach().reshape({-1}).to(torch::kFloat64);
#ifdef CHUNKWISE_CUDA
  if (v.is_cuda()) {
    item->host = torch::empty(v.sizes(), v.options().device(torch::kCPU).pinned_memory(true));
    item->host.copy_(v, /*non_blocking=*/true);
    item->copied.record(at::cuda::getCurrentCUDAStream(v.device().index()));
    queue_.push_back(std::move(item));
    return;
  }
#endif
  item->host = v.to(torch::kCPU).clone();
  queue_.push_back(std::move(item));
}

std::vector<double> DeferredValues::pop() {
  check(!queue_.empty(), "DeferredValues::pop with nothing pushed");
  std::unique_ptr<Item> item = std::move(queue_.front());
  queue_.pop_front();
#ifdef CHUNKWISE_CUDA
  if (item->host.is_pinned()) item->copied.synchronize();
#endif
  const double* p = item->host.data_ptr<double>();
  return std::vector<double>(p, p + item->host.numel());
}

}  // namespace cw
