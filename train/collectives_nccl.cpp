// NCCL backend of train/collectives.h through LibTorch's c10d::ProcessGroupNCCL (CUDA builds only). The
// rendezvous is a TCPStore on MASTER_ADDR:MASTER_PORT, as torchrun sets up.
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "common/error.h"
#include "train/collectives.h"

namespace cw {

namespace {

class NcclPending : public Pending {
 public:
  explicit NcclPending(c10::intrusive_ptr<c10d::Work> w) : w_(std::move(w)) {}
  void wait() override { w_->wait(); }

 private:
  c10::intrusive_ptr<c10d::Work> w_;
};

class NcclCollectives : public Collectives {
 public:
  NcclCollectives(const DistEnv& env, const torch::Device& device) : env_(env), store_(connect_store(env)) {
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    pg_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(store_, env.rank, env.world, opts);
    (void)device;
  }
  ~NcclCollectives() override { leave_store(*store_, env_); }
  int rank() const override { return env_.rank; }
  int world() const override { return env_.world; }
  std::unique_ptr<Pending> allreduce_sum(torch::Tensor t) override {
    std::vector<at::Tensor> v{t};
    return std::make_unique<NcclPending>(pg_->allreduce(v));
  }
  void broadcast(torch::Tensor t, int root) override {
    std::vector<at::Tensor> v{t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    pg_->broadcast(v, o)->wait();
  }
  void barrier() override {
    auto t = torch::zeros({1}, torch::TensorOptions().device(torch::kCUDA, env_.local_rank));
    allreduce_sum(t)->wait();
  }

 private:
  DistEnv env_;
  c10::intrusive_ptr<c10d::TCPStore> store_;
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> pg_;
};

}  // namespace

std::unique_ptr<Collectives> make_nccl_collectives(const DistEnv& env, const torch::Device& device) {
  return std::make_unique<NcclCollectives>(env, device);
}

}  // namespace cw
