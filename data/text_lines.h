// Two text helpers the structure readers share (data/doc_sections.cpp, data/code_functions.cpp).
// Must not: grow into a string library; anything more belongs beside its one user.
#pragma once
#include <cctype>
#include <sstream>
#include <string>
#include <vector>

namespace cw {

// S without leading and trailing whitespace.
inline std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace((unsigned char)s[b])) ++b;
  while (e > b && std::isspace((unsigned char)s[e - 1])) --e;
  return s.substr(b, e - b);
}

// TEXT's lines without their newlines (and without a "\r" before them).
inline std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
  }
  return lines;
}

}  // namespace cw
