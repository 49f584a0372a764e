// Recipe [data] -> the training sampler (plain windows, or windows mixed with replay of old data) and the
// validation sets, every store checked against the run's tokenizer.
// Must not: build models or touch checkpoints.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/batch.h"
#include "data/tokenizer.h"
#include "train/recipe.h"

namespace cw {

using TokenArray = std::shared_ptr<const std::vector<uint32_t>>;

// A validation store. With LOSS_BEGIN (a supervised fine-tuning store, data/sft_store.h) it is evaluated on its
// responses only, documents packed as in training; otherwise on windows of its token stream.
struct EvalSet {
  std::string name;
  TokenArray tokens;
  std::vector<uint64_t> doc_offsets, loss_begin;
};

struct TrainingData {
  std::unique_ptr<Sampler> sampler;
  TokenArray train_tokens;
  std::vector<EvalSet> eval_sets;  // "val" (data.val) first, then data.eval_sets
};

TrainingData load_training_data(const Recipe& r, const Tokenizer& tok, int64_t rank = 0, int64_t world = 1);

}  // namespace cw
