// Implementation of data/sft_pairs.h.
#include "data/sft_pairs.h"

#include <algorithm>
#include <cctype>
#include <cmath>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "data/code_functions.h"
#include "data/corpus.h"

namespace cw {

namespace {

const std::set<std::string>& stop_words() {
  static const std::set<std::string> words = {
      "the", "and", "for", "are", "but", "not", "you", "all", "any", "can", "had", "her", "was", "one", "our",
      "out", "has", "have", "his", "how", "its", "may", "new", "now", "see", "two", "way", "who", "did", "does",
      "get", "let", "use", "used", "uses", "using", "this", "that", "with", "from", "they", "them", "then", "than",
      "there", "these", "those", "their", "what", "when", "where", "which", "while", "will", "would", "should",
      "could", "into", "onto", "also", "been", "being", "were", "each", "more", "most", "other", "some", "such",
      "only", "over", "same", "very", "just", "about", "after", "before", "because", "between", "both", "must",
      "here", "your", "yours", "however", "therefore", "thus", "either", "neither", "whether", "example", "see",
      "note", "following", "above", "below", "given", "without", "within", "upon", "under", "many", "much",
      "well", "even", "still", "yet", "like", "make", "makes", "made", "need", "needs", "one", "first", "last",
      "value", "values", "case", "cases", "number", "set", "sets", "way", "ways"};
  return words;
}

std::string join(const std::vector<std::string>& parts, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? sep : "") + parts[i];
  return out;
}

// The document's title, then its headings (the first left out when it repeats the title).
std::vector<std::string> heading_path(const StructuredDoc& doc, const DocSection& s) {
  std::vector<std::string> path{doc.title};
  for (size_t i = 0; i < s.headings.size(); ++i)
    if (!(i == 0 && s.headings[i] == doc.title)) path.push_back(s.headings[i]);
  return path;
}

json to_json(const PairRecord& r) {
  return json{{"kind", r.kind},     {"prompt", r.prompt}, {"response", r.response},  {"source", r.source},
              {"anchor", r.anchor}, {"title", r.title},   {"generator", r.generator}};
}

}  // namespace

std::vector<std::string> content_words(const std::string& text) {
  std::vector<std::string> words;
  std::string w;
  auto push = [&] {
    if (w.size() >= 3 && !stop_words().count(w) && std::any_of(w.begin(), w.end(), [](char c) { return std::isalpha((unsigned char)c); }))
      words.push_back(w);
    w.clear();
  };
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '_') w += char(std::tolower(c));
    else push();
  }
  push();
  // Words that are mostly digits (versions, numbers) say little about a passage.
  words.erase(std::remove_if(words.begin(), words.end(),
                             [](const std::string& x) {
                               return std::count_if(x.begin(), x.end(), [](char c) { return std::isdigit((unsigned char)c); }) * 2 > int64_t(x.size());
                             }),
              words.end());
  return words;
}

void KeywordIndex::add(const std::string& text) {
  auto words = content_words(text);
  std::set<std::string> unique(words.begin(), words.end());
  for (auto& w : unique) ++df_[w];
  ++docs_;
}

std::vector<std::string> KeywordIndex::top(const std::string& text, int64_t n) const {
  std::map<std::string, int64_t> tf;
  for (auto& w : content_words(text)) ++tf[w];
  std::vector<std::pair<double, std::string>> scored;
  for (auto& [w, f] : tf) {
    auto it = df_.find(w);
    const int64_t df = it == df_.end() ? 0 : it->second;
    if (df < 2) continue;  // in one chunk only: often a typo or an identifier fragment
    scored.emplace_back(-double(f) * std::log(double(docs_) / double(df)), w);
  }
  std::sort(scored.begin(), scored.end());
  std::vector<std::string> out;
  for (size_t i = 0; i < scored.size() && int64_t(out.size()) < n; ++i)
    if (scored[i].first < 0) out.push_back(scored[i].second);
  return out;
}

bool in_test_split(const std::string& source, double fraction, uint64_t seed) {
  if (fraction <= 0) return false;
  uint64_t h = 1469598103934665603ull ^ (seed * 0x9E3779B97F4A7C15ull);
  for (unsigned char c : source) h = (h ^ c) * 1099511628211ull;
  h ^= h >> 33, h *= 0xff51afd7ed558ccdull, h ^= h >> 33;
  return double(h >> 11) * 0x1.0p-53 < fraction;
}

namespace {

// A document split by its structure and chunked, once (the keyword index and the records both read it).
struct ChunkedDoc {
  StructuredDoc doc;
  std::vector<TextChunk> chunks;
};

// The records of one file: RAW its text (for code files), CHUNKED its chunks (for documents).
std::vector<PairRecord> document_pairs(const std::string& source, const std::string& raw, const ChunkedDoc& chunked,
                                       const PairOptions& opt,
                                       const std::function<std::vector<std::string>(const std::string&)>& keywords_of) {
  std::vector<PairRecord> out;
  if (is_code_file(source)) {
    const bool test_code = source.find("testdata/") != std::string::npos ||
                           (source.size() > 8 && source.compare(source.size() - 8, 8, "_test.go") == 0);
    if (!opt.kinds.count("function") || test_code) return out;  // tests document the tests, not the code
    for (auto& f : documented_functions(source, raw)) {
      PairRecord r;
      r.kind = "function", r.generator = "doc-comment";
      r.prompt = f.summary + "\n\nWrite the " + f.language + " function " + f.name + " that does this.";
      r.response = f.code;
      while (!r.response.empty() && r.response.back() == '\n') r.response.pop_back();
      r.source = source, r.anchor = f.name + "@" + std::to_string(f.line), r.title = source;
      out.push_back(std::move(r));
    }
    return out;
  }
  const StructuredDoc& doc = chunked.doc;
  const std::vector<TextChunk>& chunks = chunked.chunks;
  std::map<size_t, int64_t> parts;  // chunks per section
  for (auto& c : chunks) ++parts[c.section];
  std::map<size_t, int64_t> seen;
  for (auto& c : chunks) {
    const DocSection& s = doc.sections[c.section];
    const auto path = heading_path(doc, s);
    const int64_t part = ++seen[c.section], of = parts[c.section];
    auto base = [&](const std::string& kind, const std::string& generator) {
      PairRecord r;
      r.kind = kind, r.generator = generator, r.source = source, r.title = doc.title;
      r.anchor = s.anchor;
      r.response = c.text;
      return r;
    };
    if (opt.kinds.count("paragraph")) {
      PairRecord r = base("paragraph", "none");
      r.response = join(path, " > ") + "\n\n" + c.text;
      out.push_back(std::move(r));
    }
    if (opt.kinds.count("qa") && !s.headings.empty()) {
      PairRecord r = base("qa", "heading-template");
      const std::string& h = s.headings.back();
      std::string context = join(std::vector<std::string>(path.begin(), path.end() - (path.size() > 1)), " > ");
      if (s.headings.size() == 1 && h == doc.title) r.prompt = "What is " + doc.title + " about?";
      else if (h.back() == '?') r.prompt = h + " (" + context + ")";
      else r.prompt = "In " + context + ", what does the section \"" + h + "\" say?";
      if (of > 1) r.prompt += " (part " + std::to_string(part) + " of " + std::to_string(of) + ")";
      out.push_back(std::move(r));
    }
    if (opt.kinds.count("keyword")) {
      auto words = keywords_of(c.text);
      if (words.size() >= 2) {
        PairRecord r = base("keyword", "tf-idf");
        r.prompt = "Keywords: " + join(words, ", ") + "\nWhich passage of " + doc.title + " covers them?";
        out.push_back(std::move(r));
      }
    }
  }
  return out;
}

}  // namespace

PairReport build_pairs(const PairOptions& opt) {
  check(opt.budget >= 16, "pairs: --budget ", opt.budget, " is too small (at least 16 tokens)");
  check(opt.overlap >= 0 && opt.overlap * 2 <= opt.budget, "pairs: --overlap must be between 0 and half the budget");
  check(opt.test_fraction >= 0 && opt.test_fraction < 1, "pairs: --test-fraction must be in [0, 1)");
  static const std::set<std::string> known = {"paragraph", "qa", "keyword", "function"};
  check(!opt.kinds.empty(), "pairs: no kinds selected (paragraph, qa, keyword, function)");
  for (auto& k : opt.kinds) check(known.count(k), "pairs: unknown kind '", k, "' (paragraph, qa, keyword, function)");
  fs::create_directories(opt.out_dir);
  const fs::path manifest = opt.out_dir / "pairs.json";
  if (fs::exists(manifest)) fs::remove(manifest);  // the JSONL files below are not the old manifest's any more

  std::vector<Document> docs;
  for_each_document(opt.inputs, [&](Document&& d) { docs.push_back(std::move(d)); }, /*keep_html=*/true);
  PairReport rep;
  rep.documents = int64_t(docs.size());

  // Documents are split and chunked once; code files keep no chunks. Keywords are fitted on every chunk of
  // every document (both splits: no answer text leaks through them).
  std::vector<ChunkedDoc> chunked(docs.size());
  KeywordIndex index;
  for (size_t i = 0; i < docs.size(); ++i) {
    if (is_code_file(docs[i].source)) continue;
    chunked[i].doc = split_structure(docs[i].source, docs[i].text);
    chunked[i].chunks = chunk_sections(chunked[i].doc, opt.budget, opt.overlap, opt.count);
    rep.chunks += int64_t(chunked[i].chunks.size());
    if (opt.kinds.count("keyword"))
      for (auto& c : chunked[i].chunks) index.add(c.text);
  }
  auto keywords_of = [&](const std::string& text) { return index.top(text, opt.keywords); };

  std::string train, test;
  int64_t done = 0;
  for (size_t i = 0; i < docs.size(); ++i) {
    const Document& d = docs[i];
    if (opt.on_progress) opt.on_progress(done++, int64_t(docs.size()));
    const bool is_test = in_test_split(d.source, opt.test_fraction, opt.seed);
    rep.test_documents += is_test;
    for (auto& r : document_pairs(d.source, d.text, chunked[i], opt, keywords_of)) {
      if (r.kind == "function" && opt.count(r.response) > 4 * opt.budget) {
        ++rep.functions_too_long;
        continue;
      }
      rep.functions += r.kind == "function";
      (is_test ? rep.test : rep.train)[r.kind]++;
      (is_test ? test : train) += to_json(r).dump() + "\n";
    }
  }
  if (opt.on_progress) opt.on_progress(done, int64_t(docs.size()));
  check(!train.empty() || !test.empty(), "pairs: no records from ", join(opt.inputs, ", "),
        " (no documents with paragraphs and no documented functions)");
  write_file_atomic(opt.out_dir / "train.jsonl", train);
  write_file_atomic(opt.out_dir / "test.jsonl", test);
  auto count_of = [](const std::map<std::string, int64_t>& m) {
    int64_t n = 0;
    for (auto& [k, v] : m) n += v;
    return n;
  };
  json j = {{"inputs", opt.inputs},
            {"kinds", std::vector<std::string>(opt.kinds.begin(), opt.kinds.end())},
            {"budget", opt.budget},
            {"overlap", opt.overlap},
            {"test_fraction", opt.test_fraction},
            {"seed", opt.seed},
            {"documents", rep.documents},
            {"test_documents", rep.test_documents},
            {"functions_too_long", rep.functions_too_long},
            {"train", rep.train},
            {"test", rep.test},
            {"train_records", count_of(rep.train)},
            {"test_records", count_of(rep.test)}};
  write_file_atomic(manifest, j.dump(2) + "\n");  // last: its presence says the JSONL files are complete
  return rep;
}

}  // namespace cw
