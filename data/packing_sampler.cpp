// Implementation of data/packing_sampler.h.
#include "data/packing_sampler.h"

#include <algorithm>
#include <map>
#include <random>

#include "common/error.h"
#include "common/json.h"

namespace cw {

PackingSampler::PackingSampler(std::shared_ptr<const std::vector<uint32_t>> tokens, std::vector<uint64_t> doc_offsets,
                               PackingOptions opt, std::vector<uint64_t> loss_begin)
    : tokens_(std::move(tokens)), offsets_(std::move(doc_offsets)), loss_begin_(std::move(loss_begin)), opt_(opt) {
  check(opt_.seq_len > 0 && opt_.batch_size > 0, "seq_len and batch_size must be positive");
  check(loss_begin_.empty() || loss_begin_.size() + 1 == offsets_.size(), "packing: ", loss_begin_.size(),
        " response starts for ", offsets_.size() - 1, " documents");
  build_rows();
  check(int64_t(rows_.size()) >= opt_.batch_size * opt_.world, "best-fit packing gives ", rows_.size(),
        " rows, fewer than one batch of ", opt_.batch_size * opt_.world);
}

void PackingSampler::build_rows() {
  const uint64_t T = uint64_t(opt_.seq_len);
  std::vector<Chunk> chunks;
  for (size_t d = 0; d + 1 < offsets_.size(); ++d)
    for (uint64_t b = offsets_[d]; b < offsets_[d + 1]; b += T) {
      uint64_t e = std::min(b + T, offsets_[d + 1]);
      const uint64_t loss_from = offsets_[d] + (loss_begin_.empty() ? 0 : loss_begin_[d]);
      if (e - b >= 2 || e < offsets_[d + 1]) chunks.push_back({b, e, offsets_[d + 1], loss_from});  // a lone EOS teaches nothing
    }
  std::mt19937_64 rng(opt_.seed * 0x9E3779B97F4A7C15ull + uint64_t(epoch_) + 7);
  std::shuffle(chunks.begin(), chunks.end(), rng);  // ties in length are broken differently every epoch
  std::stable_sort(chunks.begin(), chunks.end(), [](const Chunk& a, const Chunk& b) {
    return a.end - a.begin > b.end - b.begin;
  });
  rows_.clear();
  std::multimap<uint64_t, size_t> space;  // remaining capacity -> row
  for (auto& c : chunks) {
    const uint64_t len = c.end - c.begin;
    auto it = space.lower_bound(len);  // the fullest row that still fits
    size_t row;
    uint64_t left;
    if (it == space.end()) {
      row = rows_.size();
      rows_.emplace_back();
      left = T;
    } else {
      row = it->second;
      left = it->first;
      space.erase(it);
    }
    rows_[row].push_back(c);
    if (left - len > 0) space.emplace(left - len, row);
  }
  std::shuffle(rows_.begin(), rows_.end(), rng);
}

double PackingSampler::fill() const {
  uint64_t used = 0;
  for (auto& r : rows_)
    for (auto& c : r) used += c.end - c.begin;
  return double(used) / double(rows_.size() * uint64_t(opt_.seq_len));
}

Batch PackingSampler::next() {
  const int64_t B = opt_.batch_size, T = opt_.seq_len;
  auto tokens = torch::zeros({B, T}, torch::kInt64), targets = torch::full({B, T}, kIgnoreIndex, torch::kInt64);
  auto positions = torch::zeros({B, T}, torch::kInt64);
  auto segments = torch::full({B, T}, -1, torch::kInt32);
  auto* tk = tokens.data_ptr<int64_t>();
  auto* tg = targets.data_ptr<int64_t>();
  auto* ps = positions.data_ptr<int64_t>();
  auto* sg = segments.data_ptr<int32_t>();
  const uint32_t* src = tokens_->data();
  int64_t n_targets = 0;
  for (int64_t b = 0; b < B; ++b) {
    if (cursor_ + opt_.world > int64_t(rows_.size())) {
      ++epoch_;
      cursor_ = 0;
      build_rows();
    }
    const auto& row = rows_[size_t(cursor_ + opt_.rank)];
    cursor_ += opt_.world;
    int64_t at = b * T;
    int32_t seg = 0;
    for (auto& c : row) {
      for (uint64_t t = c.begin; t < c.end; ++t, ++at) {
        tk[at] = int64_t(src[t]);
        ps[at] = int64_t(t - c.begin);
        sg[at] = seg;
        if (t + 1 < c.doc_end && t + 1 >= c.loss_from) tg[at] = int64_t(src[t + 1]), ++n_targets;
      }
      ++seg;
    }
  }
  Batch batch;
  batch.tokens = tokens, batch.targets = targets, batch.positions = positions, batch.segments = segments;
  batch.has_segments = true;
  batch.n_target_tokens = n_targets;
  return batch;
}

std::string PackingSampler::state() const {
  return json{{"kind", "bestfit"}, {"epoch", epoch_}, {"cursor", cursor_}, {"seq_len", opt_.seq_len},
              {"batch_size", opt_.batch_size}, {"seed", opt_.seed}, {"world", opt_.world}}
      .dump();
}

void PackingSampler::restore(const std::string& text) {
  json s = parse_json_checked(text, "sampler state");
  check(s.value("kind", "") == "bestfit", "the checkpoint's data position is not a best-fit packing sampler's");
  check(s["seq_len"] == opt_.seq_len && s["batch_size"] == opt_.batch_size && s["seed"] == opt_.seed &&
            s["world"] == opt_.world,
        "the checkpoint's packing sampler was built with other settings; keep the [data] settings you resume");
  epoch_ = s["epoch"].get<int64_t>();
  cursor_ = s["cursor"].get<int64_t>();
  build_rows();
}

}  // namespace cw
