// Implementation of data/sft_store.h.
#include "data/sft_store.h"

#include <sstream>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "data/token_store.h"
#include "data/tokenizer.h"

namespace cw {

const char* const kDefaultSftTemplate = "### Question:\n{prompt}\n\n### Answer:\n";

std::string apply_sft_template(const std::string& prompt_template, const std::string& prompt) {
  if (prompt.empty()) return "";
  const size_t at = prompt_template.find("{prompt}");
  check(at != std::string::npos, "SFT template '", prompt_template, "' has no {prompt}");
  return prompt_template.substr(0, at) + prompt + prompt_template.substr(at + 8);
}

namespace {

struct SplitOut {
  TokenStoreContents store;
  std::vector<uint64_t> loss_begin;
  int64_t answer_tokens = 0;
};

void read_split(const fs::path& jsonl, int64_t expected, const SftPrepareOptions& opt, const Tokenizer& tok,
                SplitOut& out, int64_t& too_long) {
  std::istringstream in(read_file(jsonl));
  std::string line;
  int64_t lineno = 0;
  for (; std::getline(in, line);) {
    ++lineno;
    const std::string where = jsonl.string() + ":" + std::to_string(lineno);
    json j = parse_json_checked(line, where);
    check(j.is_object() && j.contains("prompt") && j["prompt"].is_string() && j.contains("response") &&
              j["response"].is_string() && j.contains("kind") && j["kind"].is_string(),
          where, ": a pair record needs string fields kind, prompt and response");
    const std::string kind = j["kind"].get<std::string>();
    if (!opt.kinds.empty() && !opt.kinds.count(kind)) continue;
    auto prompt = tok.encode(apply_sft_template(opt.prompt_template, j["prompt"].get<std::string>()));
    auto response = tok.encode(j["response"].get<std::string>());
    check(!response.empty(), where, ": the response is empty");
    const int64_t n = int64_t(prompt.size() + response.size()) + 1;
    if (opt.max_tokens > 0 && n > opt.max_tokens) {
      ++too_long;
      continue;
    }
    auto& s = out.store;
    const uint64_t start = s.tokens.size();
    for (int t : prompt) s.tokens.push_back(uint32_t(t));
    out.loss_begin.push_back(s.tokens.size() - start);
    for (int t : response) s.tokens.push_back(uint32_t(t));
    s.tokens.push_back(uint32_t(tok.identity().eos_id));
    out.answer_tokens += int64_t(response.size()) + 1;
    s.doc_offsets.push_back(s.tokens.size());
    std::string source = j.value("source", std::string("?"));
    if (j.contains("anchor") && j["anchor"].is_string() && !j["anchor"].get<std::string>().empty())
      source += "#" + j["anchor"].get<std::string>();
    s.doc_source.push_back(source + " [" + kind + "]");
  }
  check(lineno == expected, jsonl.string(), " holds ", lineno, " records but pairs.json says ", expected,
        ": the pairs folder is incomplete or was edited; run `chunkwise data pairs` again");
}

void write_split(const fs::path& path, const SplitOut& s, const std::string& prompt_template) {
  const fs::path partial = path.string() + ".partial";
  write_token_store(partial, s.store);
  StoreGroup g;
  g.u64["loss_begin"] = s.loss_begin;
  g.strings["template"] = prompt_template;
  write_store_group(partial, "sft", g);
  fs::rename(partial, path);
  fsync_path(path.parent_path());
}

}  // namespace

SftPrepareReport prepare_sft(const SftPrepareOptions& opt) {
  const fs::path manifest = opt.pairs / "pairs.json";
  check(fs::exists(manifest), manifest.string(), " not found: give the folder `chunkwise data pairs` wrote (its "
        "pairs.json is written last, so a folder without it is incomplete)");
  json m = parse_json_checked(read_file(manifest), manifest.string());
  check(m.contains("train_records") && m.contains("test_records"), manifest.string(), ": not a pairs manifest");
  apply_sft_template(opt.prompt_template, "x");  // checks the template
  Tokenizer tok = Tokenizer::load(opt.tokenizer);
  const TokenizerIdentity& id = tok.identity();
  SftPrepareReport rep;
  SplitOut train, val;
  for (SplitOut* s : {&train, &val}) {
    s->store.tokenizer = id;
    s->store.split = s == &train ? "train" : "val";
  }
  read_split(opt.pairs / "train.jsonl", m["train_records"].get<int64_t>(), opt, tok, train, rep.too_long);
  read_split(opt.pairs / "test.jsonl", m["test_records"].get<int64_t>(), opt, tok, val, rep.too_long);
  check(train.store.n_docs() > 0, "no training records left (kinds ", opt.kinds.size(), " selected, ", rep.too_long,
        " longer than --max-tokens)");
  fs::create_directories(opt.out_dir);
  write_split(opt.out_dir / "train.h5", train, opt.prompt_template);
  if (val.store.n_docs() > 0) write_split(opt.out_dir / "val.h5", val, opt.prompt_template);
  else if (fs::exists(opt.out_dir / "val.h5")) fs::remove(opt.out_dir / "val.h5");  // not this data's
  rep.train_examples = train.store.n_docs(), rep.val_examples = val.store.n_docs();
  rep.train_tokens = int64_t(train.store.tokens.size()), rep.val_tokens = int64_t(val.store.tokens.size());
  rep.train_answer_tokens = train.answer_tokens;
  return rep;
}

std::vector<uint64_t> read_sft_loss_begin(const fs::path& store, const std::vector<uint64_t>& doc_offsets) {
  auto g = read_store_group(store, "sft");
  if (!g) return {};
  auto it = g->u64.find("loss_begin");
  check(it != g->u64.end(), store.string(), ": the sft group has no loss_begin");
  const auto& lb = it->second;
  check(lb.size() + 1 == doc_offsets.size(), store.string(), ": the sft group has ", lb.size(), " entries for ",
        doc_offsets.size() - 1, " documents");
  for (size_t i = 0; i < lb.size(); ++i)
    check(lb[i] < doc_offsets[i + 1] - doc_offsets[i], store.string(), ": document ", i, "'s response begins at ",
          lb[i], ", past its ", doc_offsets[i + 1] - doc_offsets[i], " tokens");
  return lb;
}

}  // namespace cw
