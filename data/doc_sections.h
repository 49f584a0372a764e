// Documents split by their structure for fine-tuning data: sections under their headings (Markdown ATX and
// setext headings, reStructuredText underlined titles, HTML h1-h6 with the nearest id as anchor), paragraphs
// inside each section (blank lines; HTML blocks; fenced code kept whole), then chunks of whole paragraphs
// within a token budget, with an overlap carried from the previous chunk of the same section.
// Must not: tokenize by itself (the caller passes the counter), read files, or write anything.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace cw {

struct DocSection {
  std::vector<std::string> headings;  // outermost first; empty before the first heading
  std::string anchor;                 // HTML id, reST label or a slug of the heading ("" before any)
  std::vector<std::string> paragraphs;
};

struct StructuredDoc {
  std::string title;  // the first top-level heading, else the file name without folders and extension
  std::vector<DocSection> sections;
};

// SOURCE's extension picks the reader: .md/.markdown, .rst/.txt with reST titles, .html/.htm; anything else
// (plain text, code) is paragraphs without headings. TEXT is the file's raw contents (HTML with its tags).
StructuredDoc split_structure(const std::string& source, const std::string& text);

// A GitHub-style slug: lower case, letters/digits kept, spaces and hyphens to '-', the rest dropped.
std::string slug(const std::string& heading);

using TokenCounter = std::function<int64_t(const std::string&)>;
int64_t count_words(const std::string& text);  // the default counter: whitespace-separated words

struct TextChunk {
  size_t section;    // index into StructuredDoc::sections
  std::string text;  // paragraphs joined by blank lines
  int64_t tokens;
};

// Chunks of at most BUDGET tokens (COUNT's units) of whole paragraphs; a paragraph longer than the budget is
// cut at sentence ends, then between words. Each chunk after the first of a section starts with about OVERLAP
// tokens of the previous one's end (whole words). Sections without paragraphs give no chunk.
std::vector<TextChunk> chunk_sections(const StructuredDoc& doc, int64_t budget, int64_t overlap,
                                      const TokenCounter& count = count_words);

}  // namespace cw
