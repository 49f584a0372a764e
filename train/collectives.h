// Collective operations between the processes of a data-parallel run, started by the torchrun convention
// (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Two backends behind one interface: NCCL through
// LibTorch's c10d::ProcessGroupNCCL for CUDA tensors, and a TCPStore-based exchange for CPU tensors (for tests
// and small CPU runs: every rank reads every other rank's bytes, so it does not scale).
// Must not: know about models or optimizers (train/data_parallel.h builds on this).
#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>

namespace cw {

struct DistEnv {
  int rank = 0, world = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool agent_store = false;  // torchrun's agent already serves the store on MASTER_PORT: every rank is a client
  int timeout_s = 300;       // rendezvous and store operations, seconds (CHUNKWISE_DIST_TIMEOUT)
  bool active() const { return world > 1; }
  static DistEnv from_environment();  // UserError naming the variable that is missing or malformed
};

// A started operation; wait() returns when its result is in place.
class Pending {
 public:
  virtual ~Pending() = default;
  virtual void wait() = 0;
};

class Collectives {
 public:
  virtual ~Collectives() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  virtual std::unique_ptr<Pending> allreduce_sum(torch::Tensor t) = 0;  // in place, asynchronous
  virtual void broadcast(torch::Tensor t, int root) = 0;                 // in place
  virtual void barrier() = 0;
};

}  // namespace cw

namespace c10d {
class TCPStore;
}

namespace cw {

// The rendezvous store on MASTER_ADDR:MASTER_PORT: rank 0 serves it unless torchrun's agent already does.
c10::intrusive_ptr<c10d::TCPStore> connect_store(const DistEnv& env);
// Called by each rank as its collectives close: the rank that serves the store waits (a bounded time) until
// every rank has called it, so that ranks leaving at the same step never lose the store mid-operation.
// Never throws.
void leave_store(c10d::TCPStore& store, const DistEnv& env) noexcept;

// NCCL for a CUDA device, the store exchange for the CPU.
std::unique_ptr<Collectives> make_collectives(const DistEnv& env, const torch::Device& device);

}  // namespace cw
