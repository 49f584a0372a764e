// Supervised fine-tuning stores from pair datasets (data/sft_pairs.h): every record becomes one document of
// the token store, its prompt in a chat template followed by its response and EOS, and the store's "sft"
// group holds, per document, where the response begins (loss_begin): training and evaluation take the loss on
// response tokens only. train.jsonl -> train.h5, test.jsonl -> val.h5.
// Must not: leave a store without its "sft" group under the final name (it would train on prompts too).
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace cw {

// "### Question:\n{prompt}\n\n### Answer:\n": the prompt's place is {prompt}.
extern const char* const kDefaultSftTemplate;

struct SftPrepareOptions {
  std::filesystem::path pairs;      // a folder from `chunkwise data pairs` (pairs.json, train.jsonl, test.jsonl)
  std::filesystem::path tokenizer;  // SentencePiece model
  std::filesystem::path out_dir;
  std::set<std::string> kinds;      // empty: every kind
  std::string prompt_template = kDefaultSftTemplate;
  int64_t max_tokens = 0;           // > 0: records longer than this are left out (counted)
};

struct SftPrepareReport {
  int64_t train_examples = 0, val_examples = 0, train_tokens = 0, val_tokens = 0, train_answer_tokens = 0;
  int64_t too_long = 0;
};

SftPrepareReport prepare_sft(const SftPrepareOptions& opt);

// The prompt as the model sees it ("" for an empty prompt: plain text, loss on all of it).
std::string apply_sft_template(const std::string& prompt_template, const std::string& prompt);

// Per document: the first token of its response, relative to the document's start; empty when the store has
// no "sft" group. Checked against the store's documents.
std::vector<uint64_t> read_sft_loss_begin(const std::filesystem::path& store, const std::vector<uint64_t>& doc_offsets);

}  // namespace cw
