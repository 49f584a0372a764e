// Tokenizer round trip; HDF5 stores read back by h5py; deterministic split; tokenizer mixing refused;
// truncated and corrupted stores rejected.
#include <gtest/gtest.h>

#include <array>
#include <tuple>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "data/prepare.h"
#include "data/token_store.h"
#include "data/tokenizer.h"
#include "tests/test_util.h"

using namespace cw;
using namespace cw::test;

TEST(Tokenizer, RoundTripsAnyText) {
  Tokenizer tok = Tokenizer::load(shared_tokenizer());
  EXPECT_EQ(tok.identity().vocab_size, 400);
  EXPECT_EQ(tok.identity().eos_id, 2);
  for (std::string s : {std::string("The kernel reads the page table."), std::string("  indented\n\tcode()  \n"),
                        std::string("unicode: \xC3\xA9\xE2\x82\xAC \xF0\x9F\x98\x80 \xE4\xB8\xAD"),
                        std::string("digits 1234567 and symbols {}[]<>~`")}) {
    auto ids = tok.encode(s);
    EXPECT_FALSE(ids.empty());
    EXPECT_EQ(tok.decode(ids), s);
  }
  // Learned merges make in-domain text shorter than its bytes.
  std::string in_domain = "The scheduler locks the socket. The kernel reads the page table.";
  EXPECT_LT(tok.encode(in_domain).size(), in_domain.size() / 3);
}

TEST(Tokenizer, MissingOrBadModelIsAClearError) {
  auto dir = scratch_dir("tok-bad");
  EXPECT_THROW(Tokenizer::load(dir / "none.model"), UserError);
  write_text(dir / "bad.model", "garbage");
  EXPECT_THROW(Tokenizer::load(dir / "bad.model"), UserError);
}

TEST(TokenStore, PreparedStoreReadsBackInH5py) {
  fs::path data = shared_prepared_data();
  auto train = read_token_store(data / "train.h5");
  auto val = read_token_store(data / "val.h5");
  Tokenizer tok = Tokenizer::load(shared_tokenizer());
  EXPECT_EQ(train.n_docs() + val.n_docs(), 200);
  EXPECT_EQ(val.n_docs(), 20);
  EXPECT_TRUE(train.tokenizer == tok.identity());
  for (int64_t d = 0; d < train.n_docs(); ++d)
    EXPECT_EQ(train.tokens[train.doc_offsets[size_t(d + 1)] - 1], uint32_t(tok.identity().eos_id));
  // The first document decodes back to its source text.
  std::vector<int> first(train.tokens.begin(), train.tokens.begin() + int64_t(train.doc_offsets[1]) - 1);
  auto docs = synthetic_corpus(200, 7);
  std::string src = train.doc_source[0];
  auto it = std::find_if(docs.begin(), docs.end(), [&](auto& d) { return d.source == src; });
  ASSERT_NE(it, docs.end());
  EXPECT_EQ(tok.decode(first), it->text);

  json expect = {{"n_tokens", train.tokens.size()}, {"n_docs", train.n_docs()},
                 {"first_tokens", std::vector<uint32_t>(train.tokens.begin(), train.tokens.begin() + 20)},
                 {"last_offset", train.doc_offsets.back()}, {"source0", train.doc_source[0]},
                 {"tokenizer_hash", tok.identity().hash}, {"vocab_size", tok.identity().vocab_size},
                 {"eos_id", tok.identity().eos_id}, {"token_sum", 0}};
  uint64_t sum = 0;
  for (auto t : train.tokens) sum += t;
  expect["token_sum"] = sum;
  auto dir = scratch_dir("h5py");
  write_text(dir / "expect.json", expect.dump());
  std::string out;
  int rc = run_command(python() + " " + source_dir() + "/tests/py/check_store.py " + (data / "train.h5").string() +
                           " " + (dir / "expect.json").string(), &out);
  EXPECT_EQ(rc, 0) << out;
}

TEST(TokenStore, SplitIsDeterministicBySeedAndByDocument) {
  auto a = choose_val_docs(1000, 0.1, 5), b = choose_val_docs(1000, 0.1, 5), c = choose_val_docs(1000, 0.1, 6);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_EQ(std::count(a.begin(), a.end(), true), 100);
}

TEST(TokenStore, RefusesToMixTokenizers) {
  auto dir = scratch_dir("mix");
  auto corpus = dir / "corpus";
  for (auto& d : synthetic_corpus(30, 3)) write_text(corpus / d.source, d.text);
  TokenizerTrainOptions o;
  o.vocab_size = 300;
  // Settings SentencePiece would reject with an internal message are refused by their flag's name first.
  for (auto [threads, sentences, flag] : {std::tuple{0, int64_t(100), "--threads 0"},
                                          std::tuple{2, int64_t(0), "--max-sentences 0"}}) {
    TokenizerTrainOptions bad = o;
    bad.threads = threads, bad.max_sentences = sentences;
    EXPECT_NE(user_error_of([&] { train_tokenizer(synthetic_corpus(30, 3), dir / "bad.model", bad); }).find(flag),
              std::string::npos);
    EXPECT_FALSE(fs::exists(dir / "bad.model"));
  }
  train_tokenizer(synthetic_corpus(30, 3), dir / "other.model", o);
  PrepareOptions p;
  p.inputs = {corpus.string()};
  p.tokenizer = shared_tokenizer();
  p.out_dir = dir / "stores";
  // Progress reports count up to every document, the last one with every token (documents' ends included).
  std::vector<std::array<int64_t, 3>> reports;
  p.on_progress = [&](int64_t done, int64_t total, int64_t tokens) { reports.push_back({done, total, tokens}); };
  PrepareReport rep = prepare_corpus(p);
  ASSERT_FALSE(reports.empty());
  EXPECT_EQ(reports.back()[0], 30);
  EXPECT_EQ(reports.back()[1], 30);
  EXPECT_EQ(reports.back()[2] + rep.train_docs + rep.val_docs, rep.train_tokens + rep.val_tokens);
  for (size_t i = 1; i < reports.size(); ++i) EXPECT_LE(reports[i - 1][0], reports[i][0]);
  p.on_progress = nullptr;
  p.tokenizer = dir / "other.model";
  try {
    prepare_corpus(p);
    ADD_FAILURE() << "mixed tokenizers";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("another tokenizer"), std::string::npos) << e.what();
  }
  auto id = read_token_store_identity(dir / "stores" / "train.h5");
  EXPECT_THROW(require_same_tokenizer(dir / "stores/train.h5", id, Tokenizer::load(dir / "other.model").identity(),
                                      "other.model"),
               UserError);
}

TEST(TokenStore, TruncatedOrCorruptedStoresAreRejected) {
  auto dir = scratch_dir("store-corrupt");
  TokenStoreContents c;
  c.tokenizer = Tokenizer::load(shared_tokenizer()).identity();
  c.split = "train";
  for (int d = 0; d < 50; ++d) {
    for (int i = 0; i < 4000; ++i) c.tokens.push_back(uint32_t((d * 7 + i) % 300));
    c.doc_offsets.push_back(c.tokens.size());
    c.doc_source.push_back("d" + std::to_string(d));
  }
  write_token_store(dir / "s.h5", c);
  EXPECT_EQ(read_token_store(dir / "s.h5").tokens, c.tokens);
  auto size = fs::file_size(dir / "s.h5");

  fs::copy_file(dir / "s.h5", dir / "trunc.h5");
  truncate_file(dir / "trunc.h5", size / 2);
  EXPECT_THROW(read_token_store(dir / "trunc.h5"), UserError);

  fs::copy_file(dir / "s.h5", dir / "flip.h5");
  flip_byte(dir / "flip.h5", size / 2);  // inside the token data: Fletcher-32 catches it
  try {
    read_token_store(dir / "flip.h5");
    ADD_FAILURE() << "corruption not detected";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("flip.h5"), std::string::npos) << e.what();
  }
  write_text(dir / "junk.h5", "this is not HDF5");
  EXPECT_THROW(read_token_store(dir / "junk.h5"), UserError);
  EXPECT_THROW(read_token_store(dir / "absent.h5"), UserError);
}
