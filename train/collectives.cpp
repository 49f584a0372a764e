// Implementation of train/collectives.h: the environment, and the TCPStore exchange for CPU tensors.
// The exchange sums in rank order on every rank, so all ranks hold bitwise the same result.
#include "train/collectives.h"

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <future>
#include <thread>

#include "common/error.h"

namespace cw {

static int env_int(const char* name, int fallback, bool required) {
  const char* v = std::getenv(name);
  if (!v || !*v) {
    check(!required, "data-parallel run: environment variable ", name, " is not set (start with torchrun, or set "
          "RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)");
    return fallback;
  }
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  check(end && *end == 0 && x >= 0 && x < (1 << 30), "environment variable ", name, "=", v, " is not a non-negative integer");
  return int(x);
}

DistEnv DistEnv::from_environment() {
  DistEnv e;
  e.world = env_int("WORLD_SIZE", 1, false);
  check(e.world >= 1, "WORLD_SIZE must be at least 1");
  if (e.world == 1) return e;
  e.rank = env_int("RANK", 0, true);
  e.local_rank = env_int("LOCAL_RANK", e.rank, false);
  check(e.rank < e.world, "RANK=", e.rank, " is not below WORLD_SIZE=", e.world);
  const char* addr = std::getenv("MASTER_ADDR");
  if (addr && *addr) e.master_addr = addr;
  e.master_port = env_int("MASTER_PORT", 29500, false);
  check(e.master_port > 0 && e.master_port < 65536, "MASTER_PORT=", e.master_port, " is not a port");
  const char* agent = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
  e.agent_store = agent && (std::string(agent) == "True" || std::string(agent) == "1");
  e.timeout_s = env_int("CHUNKWISE_DIST_TIMEOUT", 300, false);
  return e;
}

c10::intrusive_ptr<c10d::TCPStore> connect_store(const DistEnv& env) {
  c10d::TCPStoreOptions o;
  o.port = uint16_t(env.master_port);
  o.isServer = env.rank == 0 && !env.agent_store;
  o.numWorkers = size_t(env.world);
  o.waitWorkers = !env.agent_store;
  o.timeout = std::chrono::seconds(env.timeout_s);
  return c10::make_intrusive<c10d::TCPStore>(env.master_addr, o);
}

void leave_store(c10d::TCPStore& store, const DistEnv& env) noexcept {
  try {
    const std::string key = "cw/left";
    store.add(key, 1);
    if (env.rank != 0 || env.agent_store) return;
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(std::min(env.timeout_s, 30));
    while (store.add(key, 0) < env.world && std::chrono::steady_clock::now() < end)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
  } catch (...) {  // a rank that already failed: nothing to wait for
  }
}

namespace {

class StorePending : public Pending {
 public:
  explicit StorePending(std::shared_future<void> f) : f_(std::move(f)) {}
  void wait() override { f_.get(); }

 private:
  std::shared_future<void> f_;
};

// CPU exchange through the rendezvous store. Operation n: every rank writes its bytes under "op/n/rank",
// reads all ranks' bytes, combines them in rank order, then counts itself done; the last reader deletes the keys.
class StoreCollectives : public Collectives {
 public:
  explicit StoreCollectives(const DistEnv& env) : env_(env), store_(connect_store(env)) {}
  ~StoreCollectives() override {
    try {
      drain();
    } catch (...) {  // the operation's own error was (or will not be) reported by its wait()
    }
    leave_store(*store_, env_);
  }
  int rank() const override { return env_.rank; }
  int world() const override { return env_.world; }

  std::unique_ptr<Pending> allreduce_sum(torch::Tensor t) override {
    check(!t.is_cuda(), "the CPU exchange cannot reduce CUDA tensors");
    const int64_t op = next_op_++;
    // The store's client is not shared between threads: each operation waits for the one before it.
    last_ = std::async(std::launch::async, [this, t, op, prev = last_] {
              if (prev.valid()) prev.get();
              exchange(t, op, /*root=*/-1);
            }).share();
    return std::make_unique<StorePending>(last_);
  }
  void broadcast(torch::Tensor t, int root) override {
    drain();
    exchange(t, next_op_++, root);
  }
  void barrier() override {
    auto t = torch::zeros({1});
    allreduce_sum(t)->wait();
  }

 private:
  void drain() {
    if (last_.valid()) last_.get();
  }
  void exchange(torch::Tensor t, int64_t op, int root) {
    torch::Tensor c = t.contiguous();
    const size_t bytes = size_t(c.numel()) * c.element_size();
    const std::string base = "cw/op/" + std::to_string(op) + "/";
    auto to_vec = [&](const torch::Tensor& x) {
      std::vector<uint8_t> v(bytes);
      std::memcpy(v.data(), x.data_ptr(), bytes);
      return v;
    };
    if (root < 0 || root == env_.rank) store_->set(base + std::to_string(env_.rank), to_vec(c));
    if (root >= 0) {
      if (root != env_.rank) {
        auto v = store_->get(base + std::to_string(root));
        check(v.size() == bytes, "broadcast: rank ", root, " sent ", v.size(), " bytes, expected ", bytes);
        std::memcpy(c.data_ptr(), v.data(), bytes);
      }
    } else {
      torch::Tensor sum = torch::zeros_like(c, c.options().dtype(torch::kFloat64));
      for (int r = 0; r < env_.world; ++r) {
        auto v = store_->get(base + std::to_string(r));
        check(v.size() == bytes, "all-reduce: rank ", r, " sent ", v.size(), " bytes, expected ", bytes);
        torch::Tensor part = torch::empty_like(c);
        std::memcpy(part.data_ptr(), v.data(), bytes);
        sum += part.to(torch::kFloat64);
      }
      c.copy_(sum.to(c.scalar_type()));
    }
    if (!c.is_same(t)) t.copy_(c);
    if (store_->add(base + "done", 1) == env_.world) {
      for (int r = 0; r < env_.world; ++r) store_->deleteKey(base + std::to_string(r));
      store_->deleteKey(base + "done");
    }
  }

  DistEnv env_;
  c10::intrusive_ptr<c10d::TCPStore> store_;
  int64_t next_op_ = 0;
  std::shared_future<void> last_;
};

}  // namespace

#ifdef CHUNKWISE_CUDA
std::unique_ptr<Collectives> make_nccl_collectives(const DistEnv& env, const torch::Device& device);
#endif

std::unique_ptr<Collectives> make_collectives(const DistEnv& env, const torch::Device& device) {
  if (device.is_cuda()) {
#ifdef CHUNKWISE_CUDA
    return make_nccl_collectives(env, device);
#else
    fail("data-parallel training on CUDA needs a CUDA build (-DCHUNKWISE_CUDA=ON)");
#endif
  }
  return std::make_unique<StoreCollectives>(env);
}

}  // namespace cw
