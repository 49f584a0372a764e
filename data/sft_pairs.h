// Enterprise fine-tuning data from a company's documents and code (../shared/specs/data.md section 3): a
// folder of HTML / Markdown / reST / text documents and source files becomes JSONL pair datasets with
// provenance, split into train and test by source document (never by pair):
//   paragraph  - a chunk of a section, titled with its document and headings (prompt empty: plain text);
//   qa         - a question made from the section's headings, answered by the chunk;
//   keyword    - the chunk's most distinctive words (TF-IDF over all chunks) as the prompt, the chunk as answer;
//   function   - a documented function's summary as the prompt, its code as the answer.
// Must not: call a model (the QA questions are templates over headings; the record says so), or leave a
// JSONL file that looks complete after a failure (written under temporary names, then renamed).
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "data/doc_sections.h"

namespace cw {

struct PairRecord {
  std::string kind, prompt, response;
  std::string source, anchor;  // file (relative to its input) and section anchor or function name@line
  std::string title;           // the document's title
  std::string generator;       // how the prompt was made: "none", "heading-template", "tf-idf", "doc-comment"
};

struct PairOptions {
  std::vector<std::string> inputs;
  std::filesystem::path out_dir;
  std::set<std::string> kinds = {"paragraph", "qa", "keyword", "function"};
  int64_t budget = 256, overlap = 32;  // chunk size and overlap in tokens (COUNT's units)
  double test_fraction = 0.1;          // of source files, not of pairs
  uint64_t seed = 1;
  int64_t keywords = 5;                // per keyword prompt
  TokenCounter count = count_words;
  std::function<void(int64_t, int64_t)> on_progress;  // (documents turned into records, documents in all)
};

struct PairReport {
  int64_t documents = 0, test_documents = 0, functions = 0, functions_too_long = 0;
  int64_t chunks = 0;  // of documents (not code), whichever kinds are written
  std::map<std::string, int64_t> train, test;  // records per kind
};

// Writes OUT_DIR/train.jsonl, OUT_DIR/test.jsonl and OUT_DIR/pairs.json (options and counts).
PairReport build_pairs(const PairOptions& opt);

// True for sources in the test split: a seeded hash of the source's name under FRACTION.
bool in_test_split(const std::string& source, double fraction, uint64_t seed);

// Keywords by TF-IDF: fit on every chunk's text, then the top N words of a text (lower case, at least three
// letters, not a stop word, in at least two chunks; ties broken alphabetically).
class KeywordIndex {
 public:
  void add(const std::string& text);
  std::vector<std::string> top(const std::string& text, int64_t n) const;

 private:
  std::map<std::string, int64_t> df_;
  int64_t docs_ = 0;
};
std::vector<std::string> content_words(const std::string& text);

}  // namespace cw
