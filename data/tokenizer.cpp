// Implementation of data/tokenizer.h.
#include "data/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

#include "common/error.h"
#include "common/files.h"

namespace cw {

std::string fnv1a64_hex(const std::string& bytes) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long)h);
  return buf;
}

std::string TokenizerIdentity::describe() const {
  std::ostringstream os;
  os << hash << " (vocab " << vocab_size << ", bos " << bos_id << ", eos " << eos_id << ", unk " << unk_id
     << ", pad " << pad_id << ")";
  return os.str();
}

Tokenizer::Tokenizer() : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::filesystem::path& model_file) {
  check(!model_file.empty(), "no tokenizer given (set [data] tokenizer or --tokenizer)");
  check(fs::exists(model_file), "tokenizer not found: ", model_file.string(),
        " (make one with `chunkwise data tokenizer`)");
  Tokenizer t;
  std::string bytes = read_file(model_file);
  auto status = t.sp_->LoadFromSerializedProto(bytes);
  check(status.ok(), model_file.string(), ": not a SentencePiece model (", status.ToString(), ")");
  t.id_.hash = "fnv1a64:" + fnv1a64_hex(bytes);
  t.id_.vocab_size = t.sp_->GetPieceSize();
  t.id_.bos_id = t.sp_->bos_id();
  t.id_.eos_id = t.sp_->eos_id();
  t.id_.unk_id = t.sp_->unk_id();
  t.id_.pad_id = t.sp_->pad_id();
  check(t.id_.eos_id >= 0, model_file.string(), ": the tokenizer has no end-of-sequence id");
  t.path_ = model_file;
  return t;
}

std::vector<int> Tokenizer::encode(const std::string& text) const {
  std::vector<int> ids;
  auto status = sp_->Encode(text, &ids);
  check(status.ok(), "tokenizer failed: ", status.ToString());
  return ids;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  std::string text;
  std::vector<int> ok;
  ok.reserve(ids.size());
  for (int i : ids) if (i >= 0 && i < id_.vocab_size) ok.push_back(i);
  auto status = sp_->Decode(ok, &text);
  check(status.ok(), "tokenizer failed: ", status.ToString());
  return text;
}

void train_tokenizer(const std::vector<Document>& docs, const std::filesystem::path& out,
                     const TokenizerTrainOptions& opt) {
  check(!docs.empty(), "no documents to train the tokenizer on");
  check(opt.vocab_size >= 300, "vocabulary size ", opt.vocab_size, " is too small (byte fallback needs 259+)");
  check(opt.threads >= 1 && opt.threads <= 128, "--threads ", opt.threads, ": SentencePiece trains with 1 to 128");
  check(opt.max_sentences >= 1, "--max-sentences ", opt.max_sentences, ": sample at least one line");
  // Lines are SentencePiece's sentences; very long lines are cut so training never rejects them.
  const size_t kMaxLine = 8192;
  std::vector<std::string> lines;
  for (auto& d : docs) {
    std::istringstream in(d.text);
    std::string line;
    while (std::getline(in, line)) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      for (size_t i = 0; i < line.size(); i += kMaxLine) lines.push_back(line.substr(i, kMaxLine));
    }
  }
  std::mt19937_64 rng(opt.seed);
  std::shuffle(lines.begin(), lines.end(), rng);
  if (int64_t(lines.size()) > opt.max_sentences) lines.resize(size_t(opt.max_sentences));
  fs::path dir = out.has_parent_path() ? out.parent_path() : fs::path(".");
  fs::create_directories(dir);
  std::string stem = (dir / (".tok-train-" + std::to_string(::getpid()))).string();
  {
    std::ofstream f(stem + ".txt", std::ios::binary);
    for (auto& l : lines) f << l << '\n';
    check(bool(f), "cannot write ", stem, ".txt");
  }
  std::ostringstream args;
  args << "--input=" << stem << ".txt --model_prefix=" << stem << " --vocab_size=" << opt.vocab_size
       << " --model_type=bpe --byte_fallback=true --character_coverage=0.9995 --split_digits=true"
       << " --normalization_rule_name=identity --remove_extra_whitespaces=false"
       << " --allow_whitespace_only_pieces=true --max_sentence_length=" << kMaxLine * 4
       << " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --num_threads=" << opt.threads
       << " --minloglevel=1";
  auto status = sentencepiece::SentencePieceTrainer::Train(args.str());
  std::remove((stem + ".txt").c_str());
  std::remove((stem + ".vocab").c_str());
  if (!status.ok()) {
    std::remove((stem + ".model").c_str());
    fail("tokenizer training failed: ", status.ToString(),
         " (a smaller --vocab-size helps when the corpus is small)");
  }
  fsync_path(stem + ".model");
  fs::rename(stem + ".model", out);
}

}  // namespace cw
