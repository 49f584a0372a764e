// `chunkwise data pairs` (documents and code -> JSONL pair datasets, split by source) and
// `chunkwise data prepare-sft` (pairs -> token stores whose loss is on the responses only).
#include <iostream>
#include <sstream>

#include "common/files.h"
#include "data/sft_pairs.h"
#include "data/sft_store.h"
#include "data/tokenizer.h"
#include "tools/cli/commands.h"
#include "tools/cli/options.h"
#include "tools/cli/progress_line.h"

namespace cw::cli {

static std::set<std::string> comma_set(const std::string& s) {
  std::set<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.insert(item);
  return out;
}

int data_pairs_main(const Args& args) {
  po::options_description desc("data pairs options");
  PairOptions o;
  std::string out, kinds, tokenizer;
  desc.add_options()("out", po::value(&out)->required(), "folder for train.jsonl, test.jsonl and pairs.json")(
      "kinds", po::value(&kinds)->default_value("paragraph,qa,keyword,function"),
      "record kinds: paragraph, qa, keyword, function")(
      "budget", po::value(&o.budget)->default_value(256), "tokens per chunk (words without --tokenizer)")(
      "overlap", po::value(&o.overlap)->default_value(32), "tokens carried into a section's next chunk")(
      "test-fraction", po::value(&o.test_fraction)->default_value(0.1, "0.1"), "source files held out for testing")(
      "seed", po::value(&o.seed)->default_value(1), "split seed")(
      "keywords", po::value(&o.keywords)->default_value(5), "keywords per keyword prompt")(
      "tokenizer", po::value(&tokenizer)->default_value(""), "SentencePiece model: count tokens, not words")(
      "input", po::value(&o.inputs)->required(), "folders or files: HTML, Markdown, reST, text, source code");
  po::positional_options_description pos;
  pos.add("input", -1);
  po::variables_map vm;
  if (!parse_args(args, desc, pos, vm, "chunkwise data pairs --out DIR INPUT...")) return 0;
  o.out_dir = expand_user(out);
  o.kinds = comma_set(kinds);
  std::unique_ptr<Tokenizer> tok;
  if (!tokenizer.empty()) {
    tok = std::make_unique<Tokenizer>(Tokenizer::load(expand_user(tokenizer)));
    o.count = [&tok](const std::string& text) { return int64_t(tok->encode(text).size()); };
  }
  std::unique_ptr<ProgressLine> progress;  // made once the files are read (their count is the total)
  o.on_progress = [&](int64_t done, int64_t total) {
    if (!progress) progress = std::make_unique<ProgressLine>("files turned into records", total);
    progress->update(done, "", /*force=*/done == total);
    if (done == total) progress->finish();
  };
  PairReport rep = build_pairs(o);
  auto line = [](const std::map<std::string, int64_t>& m) {
    std::string s;
    for (auto& [k, v] : m) s += " " + k + " " + std::to_string(v);
    return s.empty() ? std::string(" none") : s;
  };
  std::cout << rep.documents << " files (" << rep.test_documents << " held out for testing), " << rep.chunks
            << " chunks, " << rep.functions << " documented functions";
  if (rep.functions_too_long) std::cout << " (" << rep.functions_too_long << " longer than 4 x budget left out)";
  std::cout << "\ntrain:" << line(rep.train) << " -> " << (o.out_dir / "train.jsonl").string()
            << "\ntest: " << line(rep.test) << " -> " << (o.out_dir / "test.jsonl").string() << "\n";
  return 0;
}

int data_prepare_sft_main(const Args& args) {
  po::options_description desc("data prepare-sft options");
  SftPrepareOptions o;
  std::string pairs, tokenizer, out, kinds;
  desc.add_options()("pairs", po::value(&pairs)->required(), "folder written by `chunkwise data pairs`")(
      "tokenizer", po::value(&tokenizer)->required(), "SentencePiece model (the model's to fine-tune)")(
      "out", po::value(&out)->required(), "folder for train.h5 and val.h5")(
      "kinds", po::value(&kinds)->default_value(""), "record kinds to keep (empty: all)")(
      "template", po::value(&o.prompt_template)->default_value(kDefaultSftTemplate, "\"### Question:\\n{prompt}\\n\\n### Answer:\\n\""),
      "chat template; {prompt} marks the prompt's place")(
      "max-tokens", po::value(&o.max_tokens)->default_value(0), "leave out records longer than this (0: keep all; "
      "use the recipe's data.seq_len so no response loses its prompt)");
  po::positional_options_description pos;
  po::variables_map vm;
  if (!parse_args(args, desc, pos, vm, "chunkwise data prepare-sft --pairs DIR --tokenizer FILE --out DIR")) return 0;
  o.pairs = expand_user(pairs), o.tokenizer = expand_user(tokenizer), o.out_dir = expand_user(out);
  o.kinds = comma_set(kinds);
  SftPrepareReport rep = prepare_sft(o);
  std::cout << "train: " << rep.train_examples << " examples, " << rep.train_tokens << " tokens ("
            << rep.train_answer_tokens << " in responses, the only ones with a loss) -> "
            << (o.out_dir / "train.h5").string() << "\nval:   " << rep.val_examples << " examples, " << rep.val_tokens
            << " tokens" << (rep.val_examples ? " -> " + (o.out_dir / "val.h5").string() : std::string(" (none)"))
            << "\n";
  if (rep.too_long) std::cout << rep.too_long << " records longer than --max-tokens left out\n";
  return 0;
}

}  // namespace cw::cli
