// Small device values (a step's loss and gradient norm) read back to the host one step late, so the host
// never waits for the accelerator between steps: push() starts the copy behind the work queued so far, and
// pop() returns the oldest values once their copy is done (by then, normally, long ago). On the CPU the
// values are simply kept.
// Must not: synchronise anything but the copy it waits for.
#pragma once
#include <torch/torch.h>

#include <deque>
#include <memory>
#include <vector>

namespace cw {

class DeferredValues {
 public:
  DeferredValues();
  ~DeferredValues();
  DeferredValues(const DeferredValues&) = delete;
  DeferredValues& operator=(const DeferredValues&) = delete;
  void push(const torch::Tensor& values);  // a small 1-D tensor; read as fp64
  size_t size() const { return queue_.size(); }
  std::vector<double> pop();  // the oldest pushed values; waits for their copy

 private:
  struct Item;
  std::deque<std::unique_ptr<Item>> queue_;
};

}  // namespace cw
