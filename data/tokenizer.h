// SentencePiece tokenizer: training (BPE with byte fallback, whitespace kept as written) and use.
// Its identity (hash of the model file, vocabulary size, special ids) is stamped into every token store
// and checked before training so stores and models never mix tokenizers.
// Must not: depend on LibTorch (serve/ may use it).
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "data/corpus.h"

namespace sentencepiece { class SentencePieceProcessor; }

namespace cw {

struct TokenizerIdentity {
  std::string hash;  // "fnv1a64:<hex>" of the model file's bytes
  int64_t vocab_size = 0;
  int64_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
  bool operator==(const TokenizerIdentity& o) const {
    return hash == o.hash && vocab_size == o.vocab_size && bos_id == o.bos_id && eos_id == o.eos_id &&
           unk_id == o.unk_id && pad_id == o.pad_id;
  }
  std::string describe() const;
};

struct TokenizerTrainOptions {
  int vocab_size = 8192;
  int64_t max_sentences = 2000000;  // lines sampled for training
  int threads = 2;
  uint64_t seed = 1;
};

class Tokenizer {
 public:
  static Tokenizer load(const std::filesystem::path& model_file);
  Tokenizer(Tokenizer&&) noexcept;
  ~Tokenizer();
  std::vector<int> encode(const std::string& text) const;
  std::string decode(const std::vector<int>& ids) const;
  const TokenizerIdentity& identity() const { return id_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  Tokenizer();
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  TokenizerIdentity id_;
  std::filesystem::path path_;
};

// Trains on the documents and writes OUT (written under a temporary name, then renamed).
void train_tokenizer(const std::vector<Document>& docs, const std::filesystem::path& out,
                     const TokenizerTrainOptions& opt);

std::string fnv1a64_hex(const std::string& bytes);

}  // namespace cw
