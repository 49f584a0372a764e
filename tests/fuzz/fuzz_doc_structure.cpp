// libFuzzer target: arbitrary bytes into the readers of document structure and documented functions
// (data/doc_sections.h, data/code_functions.h) and the chunker. The first byte picks the format. Never crash;
// every chunk stays within its budget unless it is a single word.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "data/code_functions.h"
#include "data/corpus.h"
#include "data/doc_sections.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const char* names[] = {"a.md", "a.rst", "a.html", "a.txt", "a.py", "a.go", "a.cc", "a.rst.txt"};
  const std::string source = names[data[0] % 8];
  const std::string text = cw::sanitize_utf8(std::string(reinterpret_cast<const char*>(data + 1), size - 1));
  auto doc = cw::split_structure(source, text);
  for (auto& c : cw::chunk_sections(doc, 16, 4))
    if (c.tokens > 16 && cw::count_words(c.text) > 1) std::abort();
  cw::documented_functions(source, text);
  return 0;
}
