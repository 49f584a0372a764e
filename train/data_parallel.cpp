// Implementation of train/data_parallel.h.
#include "train/data_parallel.h"

#include <algorithm>
#include <numeric>

#include "common/error.h"

namespace cw {

DataParallel::DataParallel(std::unique_ptr<Collectives> comm,
                           const std::vector<std::pair<std::string, torch::Tensor>>& params, DataParallelOptions opt)
    : comm_(std::move(comm)), params_(params), opt_(opt) {
  // Buckets in reverse parameter order: the last layers' gradients are ready first.
  bucket_of_.assign(params_.size(), 0), slot_in_bucket_.assign(params_.size(), 0);
  int64_t bytes = 0;
  for (size_t k = params_.size(); k-- > 0;) {
    const auto& p = params_[k].second;
    if (buckets_.empty() || bytes >= opt_.bucket_bytes) buckets_.emplace_back(), bytes = 0;
    Bucket& b = buckets_.back();
    b.offsets.push_back(b.params.empty() ? 0 : b.offsets.back() + params_[b.params.back()].second.numel());
    bucket_of_[k] = buckets_.size() - 1, slot_in_bucket_[k] = b.params.size();
    b.params.push_back(k);
    bytes += p.numel() * p.element_size();
  }
  for (auto& b : buckets_) {
    const auto& last = params_[b.params.back()].second;
    b.flat = torch::zeros({b.offsets.back() + last.numel()},
                          last.options().dtype(opt_.reduce_bf16 ? torch::kBFloat16 : last.scalar_type()));
  }
  for (size_t i = 0; i < params_.size(); ++i)
    hooks_.push_back(params_[i].second.register_hook([this, i](const torch::Tensor& g) { on_grad(i, g); }));
  // ZeRO-1 owners: largest parameters first, each to the least loaded rank.
  std::vector<size_t> order(params_.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return params_[a].second.numel() > params_[b].second.numel(); });
  std::vector<int64_t> load(size_t(world()), 0);
  owner_.assign(params_.size(), 0);
  for (size_t i : order) {
    const int r = int(std::min_element(load.begin(), load.end()) - load.begin());
    owner_[i] = r, load[size_t(r)] += params_[i].second.numel();
  }
}

DataParallel::~DataParallel() {
  for (size_t i = 0; i < hooks_.size(); ++i) params_[i].second.remove_hook(hooks_[i]);
}

Batch DataParallel::shard(const Batch& g) const {
  const int64_t B = g.tokens.size(0);
  check(B % world() == 0, "data-parallel run: [data] batch_size = ", B, " does not divide over ", world(), " ranks");
  const int64_t n = B / world(), r0 = n * rank();
  Batch b;
  b.tokens = g.tokens.narrow(0, r0, n);
  b.targets = g.targets.narrow(0, r0, n);
  b.positions = g.positions.defined() ? g.positions.narrow(0, r0, n) : g.positions;
  b.segments = g.segments.defined() ? g.segments.narrow(0, r0, n) : g.segments;
  b.has_segments = g.has_segments;
  b.n_target_tokens = (b.targets != kIgnoreIndex).sum().item<int64_t>();
  return b;
}

void DataParallel::broadcast_parameters() {
  torch::NoGradGuard ng;
  std::vector<size_t> all(params_.size());
  std::iota(all.begin(), all.end(), 0);
  broadcast_group(all, 0, [&](size_t i) { return params_[i].second; });
}

void DataParallel::arm() {
  armed_ = true;
  for (auto& b : buckets_) b.ready = 0, b.pending.reset();
}

void DataParallel::on_grad(size_t i, const torch::Tensor& g) {
  if (!armed_) return;
  torch::NoGradGuard ng;
  Bucket& b = buckets_[bucket_of_[i]];
  const auto& p = params_[i].second;
  auto slice = b.flat.narrow(0, b.offsets[slot_in_bucket_[i]], p.numel());
  if (p.grad().defined()) slice.copy_((p.grad() + g).reshape(-1));  // what .grad will hold after accumulation
  else slice.copy_(g.reshape(-1));
  if (++b.ready == b.params.size()) launch(b);
}

void DataParallel::launch(Bucket& b) { b.pending = comm_->allreduce_sum(b.flat); }

void DataParallel::finish() {
  torch::NoGradGuard ng;
  for (auto& b : buckets_) {
    if (b.pending) continue;
    // Some parameter got no gradient this step: its slot carries what .grad holds (or zeros).
    for (size_t s = 0; s < b.params.size(); ++s) {
      const auto& p = params_[b.params[s]].second;
      auto slice = b.flat.narrow(0, b.offsets[s], p.numel());
      if (p.grad().defined()) slice.copy_(p.grad().reshape(-1));
      else slice.zero_();
    }
    launch(b);
  }
  for (auto& b : buckets_) {
    b.pending->wait();
    b.pending.reset();
    for (size_t s = 0; s < b.params.size(); ++s) {
      auto& p = params_[b.params[s]].second;
      auto reduced = b.flat.narrow(0, b.offsets[s], p.numel()).view_as(p);
      if (p.grad().defined()) p.mutable_grad().copy_(reduced);
      else p.mutable_grad() = reduced.to(p.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
    }
  }
  armed_ = false;
}

double DataParallel::sum(double x) {
  const auto& p = params_.front().second;
  auto t = torch::full({1}, x, p.options().dtype(torch::kFloat64));
  comm_->allreduce_sum(t)->wait();
  return t.item<double>();
}

void DataParallel::sum_(torch::Tensor& t) { comm_->allreduce_sum(t)->wait(); }

void DataParallel::broadcast_group(const std::vector<size_t>& idx, int root,
                                   const std::function<torch::Tensor(size_t)>& get) {
  if (idx.empty()) return;
  std::vector<torch::Tensor> parts;
  for (size_t i : idx) parts.push_back(get(i).reshape(-1));
  torch::Tensor flat = torch::cat(parts);
  comm_->broadcast(flat, root);
  if (rank() == root) return;
  int64_t off = 0;
  for (size_t i : idx) {
    torch::Tensor dst = get(i);
    dst.copy_(flat.narrow(0, off, dst.numel()).view_as(dst));
    off += dst.numel();
  }
}

void DataParallel::shard_optimizer(AdamW& opt) {
  std::vector<bool> owned(params_.size());
  for (size_t i = 0; i < owned.size(); ++i) owned[i] = owner_[i] == rank();
  opt.set_owned(owned);
}

void DataParallel::broadcast_updated_parameters() {
  torch::NoGradGuard ng;
  for (int r = 0; r < world(); ++r) {
    std::vector<size_t> idx;
    for (size_t i = 0; i < params_.size(); ++i)
      if (owner_[i] == r) idx.push_back(i);
    broadcast_group(idx, r, [&](size_t i) { return params_[i].second; });
  }
}

void DataParallel::with_full_optimizer_state(AdamW& opt, const std::function<void()>& fn) {
  if (!opt_.zero1) return fn();
  torch::NoGradGuard ng;
  opt.materialize_state();
  for (int r = 0; r < world(); ++r) {
    std::vector<size_t> idx;
    for (size_t i = 0; i < params_.size(); ++i)
      if (owner_[i] == r) idx.push_back(i);
    broadcast_group(idx, r, [&](size_t i) { return opt.slots()[i].exp_avg; });
    broadcast_group(idx, r, [&](size_t i) { return opt.slots()[i].exp_avg_sq; });
  }
  fn();
  opt.release_unowned();
}

}  // namespace cw
