// `chunkwise data ...`: fetch corpora, train tokenizers, prepare HDF5 stores, inspect them, and add the
// dataset decomposition (dd/) and in-context order (icp/) to a store, or re-cut a store into documents of
// another length distribution.
#include <iostream>
#include <memory>

#include "common/files.h"
#include "data/corpus.h"
#include "data/decompose.h"
#include "data/icp_order.h"
#include "data/fetch.h"
#include "data/prepare.h"
#include "data/recut.h"
#include "data/token_store.h"
#include "data/tokenizer.h"
#include "train/metrics.h"
#include "train/model_setup.h"
#include "tools/cli/commands.h"
#include "tools/cli/options.h"
#include "tools/cli/progress_line.h"

namespace cw::cli {

static int fetch_main(const Args& args) {
  po::options_description desc("data fetch options");
  std::string name, dir;
  desc.add_options()("name", po::value(&name)->required(), "corpus name")(
      "dir", po::value(&dir)->default_value(default_corpus_cache().string()), "cache folder");
  po::positional_options_description pos;
  pos.add("name", 1);
  po::variables_map vm;
  std::string usage = "chunkwise data fetch NAME [--dir CACHE]\n\ncorpora:";
  for (auto& c : known_corpora()) usage += "\n  " + c.name + " (" + c.package + "): " + c.description;
  if (!parse_args(args, desc, pos, vm, usage)) return 0;
  std::cout << fetch_corpus(name, expand_user(dir)).string() << "\n";
  return 0;
}

static int tokenizer_main(const Args& args) {
  po::options_description desc("data tokenizer options");
  std::string out;
  std::vector<std::string> inputs;
  TokenizerTrainOptions o;
  desc.add_options()("out", po::value(&out)->required(), "tokenizer model file to write")(
      "vocab-size", po::value(&o.vocab_size)->default_value(8192), "vocabulary size")(
      "max-sentences", po::value(&o.max_sentences)->default_value(2000000), "lines sampled for training")(
      "threads", po::value(&o.threads)->default_value(2), "training threads")(
      "seed", po::value(&o.seed)->default_value(1), "sampling seed")(
      "input", po::value(&inputs)->required(), "corpus folders or files");
  po::positional_options_description pos;
  pos.add("input", -1);
  po::variables_map vm;
  if (!parse_args(args, desc, pos, vm, "chunkwise data tokenizer --out FILE [--vocab-size N] INPUT...")) return 0;
  auto docs = read_documents(inputs);
  std::cerr << "training a " << o.vocab_size << "-piece BPE tokenizer on " << docs.size() << " documents\n";
  train_tokenizer(docs, out, o);
  std::cout << out << ": " << Tokenizer::load(out).identity().describe() << "\n";
  return 0;
}

static int prepare_main(const Args& args) {
  po::options_description desc("data prepare options");
  PrepareOptions o;
  std::string tokenizer, out;
  desc.add_options()("tokenizer", po::value(&tokenizer)->required(), "SentencePiece model")(
      "out", po::value(&out)->required(), "folder for train.h5 and val.h5")(
      "val-fraction", po::value(&o.val_fraction)->default_value(0.05, "0.05"), "documents held out for validation")(
      "seed", po::value(&o.seed)->default_value(1), "split seed")(
      "threads", po::value(&o.threads)->default_value(2), "tokenizer threads")(
      "input", po::value(&o.inputs)->required(), "corpus folders or files (text, Markdown, reST, HTML, code, JSONL)");
  po::positional_options_description pos;
  pos.add("input", -1);
  po::variables_map vm;
  if (!parse_args(args, desc, pos, vm, "chunkwise data prepare --tokenizer FILE --out DIR INPUT...")) return 0;
  o.tokenizer = expand_user(tokenizer);
  o.out_dir = expand_user(out);
  std::unique_ptr<ProgressLine> progress;  // made once the documents are read (their count is the total)
  o.on_progress = [&](int64_t done, int64_t total, int64_t tokens) {
    if (!progress) progress = std::make_unique<ProgressLine>("documents tokenized", total);
    progress->update(done, format_count(double(tokens)) + " tokens", /*force=*/done == total);
    if (done == total) progress->finish();
  };
  PrepareReport rep = prepare_corpus(o);
  std::cout << "train: " << rep.train_docs << " documents, " << rep.train_tokens << " tokens -> "
            << (o.out_dir / "train.h5").string() << "\nval:   " << rep.val_docs << " documents, " << rep.val_tokens
            << " tokens -> " << (o.out_dir / "val.h5").string() << "\n";
  return 0;
}

static int info_main(const Args& args) {
  po::options_description desc("data info options");
  std::string store;
  desc.add_options()("store", po::value(&store)->required(), "token store (.h5)");
  po::positional_options_description pos;
  pos.add("store", 1);
  po::variables_map vm;
  if (!parse_args(args, desc, pos, vm, "chunkwise data info STORE")) return 0;
  auto c = read_token_store(expand_user(store));
  std::cout << store << ": split " << c.split << ", " << c.n_docs() << " documents, " << c.tokens.size()
            << " tokens\ntokenizer " << c.tokenizer.describe() << "\n";
  return 0;
}

static int decompose_main(const Args& args) {
  po::options_description desc("data decompose options");
  std::string store, mode;
  int kmin, kmax;
  uint64_t seed;
  desc.add_options()("store", po::value(&store)->required(), "token store (.h5) to decompose in place")(
      "kmin", po::value(&kmin)->default_value(8), "shortest bucket: 2^kmin tokens")(
      "kmax", po::value(&kmax)->default_value(13), "longest bucket: 2^kmax tokens")(
      "mode", po::value(&mode)->default_value("random"), "random | deterministic (long documents' pieces)")(
      "seed", po::value(&seed)->default_value(1), "seed of the random mode");
  po::positional_options_description pos;
  pos.add("store", 1);
  po::variables_map vm;
  if (!parse_args(args, desc, pos, vm, "chunkwise data decompose STORE [--kmin 8] [--kmax 13] [--mode random]")) return 0;
  auto contents = read_token_store(expand_user(store));
  Decomposition d = decompose_documents(contents.doc_offsets, kmin, kmax, mode, seed);
  write_decomposition(expand_user(store), d);
  int64_t total = 0;
  for (int k = kmin; k <= kmax; ++k) total += d.tokens_in(k);
  std::cout << store << ": " << total << " of " << contents.tokens.size() << " tokens in buckets, "
            << d.dropped_tokens << " in tails shorter than " << (1 << kmin) + 1 << "\n";
  for (int k = kmin; k <= kmax; ++k)
    std::cout << "  k " << k << " (" << (1 << k) << " tokens): " << d.bucket(k).size() << " sequences, "
              << 100.0 * double(d.tokens_in(k)) / double(std::max<int64_t>(total, 1)) << "% of tokens\n";
  return 0;
}

static int order_main(const Args& args) {
  po::options_description desc("data order options");
  std::string store, device;
  IcpOptions o;
  desc.add_options()("store", po::value(&store)->required(), "token store (.h5); the order is written into it")(
      "k", po::value(&o.k)->default_value(50), "neighbours per document")(
      "dim", po::value(&o.dim)->default_value(256), "hashed TF-IDF dimensions")(
      "block", po::value(&o.block)->default_value(1024), "query rows per matrix product")(
      "device", po::value(&device)->default_value("auto"), "auto | cpu | cuda");
  po::positional_options_description pos;
  pos.add("store", 1);
  po::variables_map vm;
  if (!parse_args(args, desc, pos, vm, "chunkwise data order STORE [--k 50] [--device auto]")) return 0;
  o.device = resolve_device(device);
  auto contents = read_token_store(expand_user(store));
  ProgressLine progress("documents searched for neighbours", contents.n_docs());
  o.on_progress = [&](int64_t done, int64_t total) {
    progress.update(done, "", /*force=*/done == total);
    if (done == total) progress.finish();
  };
  IcpResult r = icp_order(contents, o);
  write_icp_order(expand_user(store), r, o);
  std::cout << store << ": " << r.order.size() << " documents ordered, " << r.dropped << " near-duplicates dropped\n"
            << "  embed " << r.embed_s << " s, kNN " << r.knn_s << " s (" << o.device.str() << "), walk " << r.walk_s
            << " s\n  mean cosine of adjacent documents " << r.adjacent_sim << " (random order " << r.shuffled_sim << ")\n";
  return 0;
}

static int recut_main(const Args& args) {
  po::options_description desc("data recut options");
  std::string source, out;
  RecutOptions o;
  desc.add_options()("source", po::value(&source)->required(), "token store (.h5) whose tokens are re-cut")(
      "out", po::value(&out)->required(), "token store (.h5) to write")(
      "docs", po::value(&o.docs)->default_value(o.docs), "documents to write")(
      "median", po::value(&o.median)->default_value(o.median), "median document length in tokens")(
      "sigma", po::value(&o.sigma)->default_value(o.sigma), "standard deviation of the log length")(
      "max-len", po::value(&o.max_len)->default_value(o.max_len), "longest document")(
      "seed", po::value(&o.seed)->default_value(o.seed), "seed of the lengths");
  po::positional_options_description pos;
  pos.add("source", 1).add("out", 1);
  po::variables_map vm;
  const char* usage =
      "chunkwise data recut SOURCE OUT [--docs 20000] [--median 512] [--sigma 1.0]\n\n"
      "Writes OUT with SOURCE's tokens cut into documents of log-normal lengths (for throughput\n"
      "measurements of length-dependent data strategies; the boundaries are arbitrary).";
  if (!parse_args(args, desc, pos, vm, usage)) return 0;
  auto contents = recut_documents(read_token_store(expand_user(source)), o);
  write_token_store(expand_user(out), contents);
  std::cout << out << ": " << contents.n_docs() << " documents, " << contents.tokens.size() << " tokens (mean "
            << double(contents.tokens.size()) / double(contents.n_docs()) << " per document)\n";
  return 0;
}

int data_main(const Args& args) {
  const char* usage =
      "usage: chunkwise data fetch|tokenizer|prepare|info|decompose|order|recut|pairs|prepare-sft ... (each takes "
      "--help)\n";
  if (args.empty()) fail(usage);
  Args rest(args.begin() + 1, args.end());
  if (args[0] == "fetch") return fetch_main(rest);
  if (args[0] == "tokenizer") return tokenizer_main(rest);
  if (args[0] == "prepare") return prepare_main(rest);
  if (args[0] == "info") return info_main(rest);
  if (args[0] == "decompose") return decompose_main(rest);
  if (args[0] == "order") return order_main(rest);
  if (args[0] == "recut") return recut_main(rest);
  if (args[0] == "pairs") return data_pairs_main(rest);
  if (args[0] == "prepare-sft") return data_prepare_sft_main(rest);
  if (args[0] == "--help" || args[0] == "-h") {
    std::cout << usage;
    return 0;
  }
  fail("unknown data command '", args[0], "'\n", usage);
}

}  // namespace cw::cli
