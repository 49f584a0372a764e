// Reading corpora into documents: folders of text / Markdown / reST / HTML / source files (optionally
// gzip-compressed) and JSONL files with a "text" field. Paths are visited in sorted order so the same
// inputs always give the same documents in the same order.
// Must not: tokenize, split, or write anything.
#pragma once
#include <functional>
#include <string>
#include <vector>

namespace cw {

struct Document {
  std::string source;  // file path relative to its input root, or "file.jsonl:LINE"
  std::string text;    // UTF-8 (invalid bytes replaced by U+FFFD)
};

// True when PATH has an extension the reader understands (".gz" is looked through).
bool is_corpus_file(const std::string& path);

// Calls VISIT for every non-empty document under INPUTS (folders or files). KEEP_HTML: HTML documents keep
// their markup (for readers of their structure) instead of being turned into text.
void for_each_document(const std::vector<std::string>& inputs, const std::function<void(Document&&)>& visit,
                       bool keep_html = false);
std::vector<Document> read_documents(const std::vector<std::string>& inputs);

std::string html_to_text(const std::string& html);  // tags stripped, entities decoded, blocks on lines
std::string sanitize_utf8(const std::string& s);

}  // namespace cw
