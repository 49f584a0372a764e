// Implementation of models/weight_copies.h: a registry from each weight (its TensorImpl, held weakly) to its
// place in a product's buffer, with the storage and version the copy was made from.
#include "models/weight_copies.h"

#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include "common/env.h"

namespace cw {

namespace {

struct Entry {
  std::optional<c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>> weight;  // set on creation
  torch::Tensor buffer;  // the product's [sum of rows, in] buffer
  int64_t row0 = 0, rows = 0;
  const void* data = nullptr;  // the weight's storage when the copy was made
  int64_t version = -1;        // the weight's version counter then
};

std::mutex g_mutex;
std::map<const c10::TensorImpl*, Entry> g_entries;
EnvSwitch g_enabled("CHUNKWISE_WEIGHT_COPIES", true);
std::atomic<int64_t> g_reused{0}, g_cast{0};

// The live entry of W, or null (an entry whose tensor is gone, or another tensor at the same address, is
// dropped).
Entry* find(const torch::Tensor& w) {
  auto it = g_entries.find(w.unsafeGetTensorImpl());
  if (it == g_entries.end()) return nullptr;
  if (!it->second.weight || it->second.weight->lock().get() != w.unsafeGetTensorImpl()) {
    g_entries.erase(it);
    return nullptr;
  }
  return &it->second;
}

bool current(const Entry& e, const torch::Tensor& w) { return e.data == w.data_ptr() && e.version == w._version(); }

}  // namespace

bool weight_copies_enabled() { return g_enabled.on(); }
void set_weight_copies(bool on) { g_enabled.set(on); }

torch::Tensor weight_copy(at::TensorList weights, torch::ScalarType dtype) {
  if (!weight_copies_enabled() || weights.empty() || dtype != torch::kBFloat16) return {};
  for (const auto& w : weights)
    if (w.scalar_type() != torch::kFloat32 || w.dim() != 2 || w.size(1) != weights[0].size(1) ||
        w.device() != weights[0].device())
      return {};
  torch::NoGradGuard ng;
  std::lock_guard<std::mutex> lock(g_mutex);
  // The weights' entries, if they are laid out in one buffer in this order, each at its place.
  std::vector<Entry*> entries;
  int64_t row = 0;
  for (const auto& w : weights) {
    Entry* e = find(w);
    if (!e || (!entries.empty() && !e->buffer.is_same(entries.front()->buffer)) || e->row0 != row ||
        e->rows != w.size(0) || e->buffer.scalar_type() != dtype || e->buffer.device() != w.device())
      break;
    entries.push_back(e);
    row += w.size(0);
  }
  const bool laid_out = entries.size() == weights.size() && entries.front()->buffer.size(0) == row;
  if (!laid_out) {  // a new buffer for these weights, in this order
    for (auto it = g_entries.begin(); it != g_entries.end();)  // forget the copies of weights that are gone
      it = it->second.weight && !it->second.weight->expired() ? std::next(it) : g_entries.erase(it);
    int64_t total = 0;
    for (const auto& w : weights) total += w.size(0);
    auto buffer = torch::empty({total, weights[0].size(1)}, weights[0].options().dtype(dtype));
    entries.clear();
    int64_t at = 0;
    for (const auto& w : weights) {
      Entry& e = g_entries[w.unsafeGetTensorImpl()];
      e = Entry{};
      e.weight.emplace(w.getIntrusivePtr());
      e.buffer = buffer, e.row0 = at, e.rows = w.size(0);
      entries.push_back(&e);
      at += w.size(0);
    }
  }
  bool cast = false;
  for (size_t i = 0; i < weights.size(); ++i) {
    Entry& e = *entries[i];
    if (laid_out && current(e, weights[i])) continue;
    e.buffer.narrow(0, e.row0, e.rows).copy_(weights[i]);
    e.data = weights[i].data_ptr(), e.version = weights[i]._version();
    cast = true;
  }
  ++(cast ? g_cast : g_reused);
  return entries.front()->buffer;
}

torch::Tensor registered_copy(const torch::Tensor& weight) {
  if (!weight_copies_enabled()) return {};
  std::lock_guard<std::mutex> lock(g_mutex);
  Entry* e = find(weight);
  if (!e || e->buffer.device() != weight.device()) return {};
  return e->buffer.narrow(0, e->row0, e->rows);
}

void mark_copy_current(const torch::Tensor& weight) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (Entry* e = find(weight)) e->data = weight.data_ptr(), e->version = weight._version();
}

void clear_weight_copies() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_entries.clear();
}

WeightCopyStats weight_copy_stats() { return {g_reused.load(), g_cast.load()}; }

}  // namespace cw
