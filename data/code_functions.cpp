// Implementation of data/code_functions.h: line-based scanning with brace matching that skips strings and
// comments; no parser, so unusual layouts are missed rather than misread (a definition must start a line).
#include "data/code_functions.h"

#include "data/text_lines.h"

#include <algorithm>
#include <cctype>
#include <sstream>

namespace cw {

namespace {

std::string extension(const std::string& source) {
  std::string s = source;
  for (auto& c : s) c = char(std::tolower((unsigned char)c));
  if (s.size() > 3 && s.compare(s.size() - 3, 3, ".gz") == 0) s.resize(s.size() - 3);
  size_t slash = s.find_last_of('/'), dot = s.find_last_of('.');
  return dot == std::string::npos || (slash != std::string::npos && dot < slash) ? "" : s.substr(dot);
}

// The first paragraph of a comment's text, whitespace collapsed to single spaces.
std::string first_paragraph(const std::vector<std::string>& lines) {
  std::string out;
  bool started = false;
  for (auto& l : lines) {
    std::string t = trim(l);
    if (t.empty()) {
      if (started) break;
      continue;
    }
    started = true;
    if (!out.empty()) out += ' ';
    out += t;
  }
  std::string collapsed;
  for (char c : out)
    if (!(std::isspace((unsigned char)c) && !collapsed.empty() && collapsed.back() == ' '))
      collapsed += std::isspace((unsigned char)c) ? ' ' : c;
  return trim(collapsed);
}

size_t indent_of(const std::string& line) {
  size_t n = 0;
  while (n < line.size() && (line[n] == ' ' || line[n] == '\t')) ++n;
  return n;
}

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

std::string identifier_at(const std::string& s, size_t i) {
  size_t e = i;
  while (e < s.size() && (std::isalnum((unsigned char)s[e]) || s[e] == '_')) ++e;
  return s.substr(i, e - i);
}

// ---- Python ----
std::vector<CodeFunction> python(const std::vector<std::string>& lines) {
  std::vector<CodeFunction> out;
  std::vector<std::pair<size_t, std::string>> classes;  // (indent, name)
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& line = lines[i];
    std::string t = trim(line);
    if (t.empty() || t[0] == '#') continue;
    const size_t ind = indent_of(line);
    while (!classes.empty() && classes.back().first >= ind) classes.pop_back();
    if (starts_with(t, "class ")) {
      classes.emplace_back(ind, identifier_at(t, 6));
      continue;
    }
    size_t at = starts_with(t, "def ") ? 4 : starts_with(t, "async def ") ? 10 : 0;
    if (!at) continue;
    const std::string name = identifier_at(t, at);
    if (name.empty()) continue;
    // The signature ends at the line whose brackets close and which ends with ':'.
    size_t j = i;
    int depth = 0;
    for (;; ++j) {
      if (j >= lines.size()) break;
      for (char c : lines[j]) depth += (c == '(' || c == '[') - (c == ')' || c == ']');
      std::string tj = trim(lines[j]);
      if (depth <= 0 && !tj.empty() && tj.back() == ':') break;
    }
    if (j >= lines.size()) break;
    // The body: following lines indented deeper (blank lines inside included).
    size_t end = j + 1;
    while (end < lines.size() && (trim(lines[end]).empty() || indent_of(lines[end]) > ind)) ++end;
    while (end > j + 1 && trim(lines[end - 1]).empty()) --end;
    // The docstring: the body's first statement, a string literal.
    size_t k = j + 1;
    while (k < end && trim(lines[k]).empty()) ++k;
    if (k >= end) continue;
    std::string first = trim(lines[k]);
    size_t q = 0;
    while (q < first.size() && (first[q] == 'r' || first[q] == 'R' || first[q] == 'u' || first[q] == 'U')) ++q;
    std::string quote = first.compare(q, 3, "\"\"\"") == 0 ? "\"\"\"" : first.compare(q, 3, "'''") == 0 ? "'''" : "";
    if (quote.empty()) continue;
    std::vector<std::string> doc;
    std::string rest = first.substr(q + 3);
    size_t doc_end = k;
    size_t close = rest.find(quote);
    if (close != std::string::npos) {
      doc.push_back(rest.substr(0, close));
    } else {
      doc.push_back(rest);
      for (doc_end = k + 1; doc_end < end; ++doc_end) {
        size_t c = lines[doc_end].find(quote);
        if (c != std::string::npos) {
          doc.push_back(lines[doc_end].substr(0, c));
          break;
        }
        doc.push_back(lines[doc_end]);
      }
      if (doc_end >= end) continue;  // unterminated
    }
    CodeFunction f;
    f.language = "Python";
    f.name = classes.empty() ? name : classes.back().second + "." + name;
    f.summary = first_paragraph(doc);
    f.line = int64_t(i) + 1;
    for (size_t l = i; l < end; ++l) {
      if (l >= k && l <= doc_end) continue;
      f.code += lines[l].substr(std::min(ind, indent_of(lines[l]))) + "\n";
    }
    bool body_left = false;  // a function that is only its docstring teaches nothing
    for (size_t l = doc_end + 1; l < end; ++l) body_left |= !trim(lines[l]).empty();
    if (!f.summary.empty() && body_left) out.push_back(std::move(f));
    i = j;  // nested definitions are visited too
  }
  return out;
}

// ---- brace languages ----
// The line index where the block opened at or after (I, 0) closes: braces outside strings and comments.
size_t closing_line(const std::vector<std::string>& lines, size_t i, bool go) {
  int depth = 0;
  bool opened = false, block_comment = false;
  for (size_t l = i; l < lines.size(); ++l) {
    const std::string& s = lines[l];
    char in_string = 0;
    for (size_t c = 0; c < s.size(); ++c) {
      if (block_comment) {
        if (s.compare(c, 2, "*/") == 0) block_comment = false, ++c;
        continue;
      }
      if (in_string) {
        if (s[c] == '\\' && in_string != '`') ++c;
        else if (s[c] == in_string) in_string = 0;
        continue;
      }
      if (s.compare(c, 2, "//") == 0) break;
      if (s.compare(c, 2, "/*") == 0) {
        block_comment = true, ++c;
        continue;
      }
      if (s[c] == '"' || s[c] == '\'' || (go && s[c] == '`')) {
        in_string = s[c];
        continue;
      }
      if (s[c] == '{') ++depth, opened = true;
      if (s[c] == '}' && --depth == 0 && opened) return l;
    }
    if (!opened && l > i + 8) return std::string::npos;  // no body within a few lines: a declaration
  }
  return std::string::npos;
}

// The comment block right above line I: "//" / "///" lines or one /* ... */ block (markers stripped).
std::vector<std::string> comment_above(const std::vector<std::string>& lines, size_t i) {
  std::vector<std::string> doc;
  if (i == 0) return doc;
  size_t l = i - 1;
  std::string t = trim(lines[l]);
  if (t.size() >= 2 && t.compare(t.size() - 2, 2, "*/") == 0) {
    size_t start = l;
    while (start > 0 && trim(lines[start]).find("/*") == std::string::npos) --start;
    if (trim(lines[start]).find("/*") == std::string::npos) return doc;
    for (size_t k = start; k <= l; ++k) {
      std::string s = trim(lines[k]);
      if (k == start) s = s.substr(s.find("/*") + 2);
      if (k == l) s = s.substr(0, s.size() >= 2 ? s.size() - 2 : 0);
      while (!s.empty() && (s[0] == '*' || s[0] == '!')) s = s.substr(1);
      doc.push_back(trim(s));
    }
    return doc;
  }
  std::vector<std::string> rev;
  while (true) {
    std::string s = trim(lines[l]);
    if (!starts_with(s, "//")) break;
    s = s.substr(2);
    while (!s.empty() && (s[0] == '/' || s[0] == '!')) s = s.substr(1);
    rev.push_back(trim(s));
    if (l == 0) break;
    --l;
  }
  return std::vector<std::string>(rev.rbegin(), rev.rend());
}

// Appends the function on lines [BEGIN, END] with the comment DOC, when the comment has a summary.
void add_braced(std::vector<CodeFunction>& out, const std::vector<std::string>& lines, size_t begin, size_t end,
                const std::string& language, const std::string& name, const std::vector<std::string>& doc) {
  CodeFunction f;
  f.language = language, f.name = name, f.summary = first_paragraph(doc), f.line = int64_t(begin) + 1;
  for (size_t l = begin; l <= end; ++l) f.code += lines[l] + "\n";
  if (!f.summary.empty()) out.push_back(std::move(f));
}

std::vector<CodeFunction> go(const std::vector<std::string>& lines) {
  std::vector<CodeFunction> out;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& line = lines[i];
    if (!starts_with(line, "func ")) continue;
    size_t at = 5;
    std::string receiver;
    if (at < line.size() && line[at] == '(') {  // a method: (r *Type)
      size_t e = line.find(')', at);
      if (e == std::string::npos) continue;
      std::string r = line.substr(at + 1, e - at - 1);
      size_t star = r.find_last_of(" *");
      receiver = identifier_at(r, star == std::string::npos ? 0 : star + 1);
      at = e + 1;
      while (at < line.size() && line[at] == ' ') ++at;
    }
    std::string name = identifier_at(line, at);
    auto doc = comment_above(lines, i);
    if (name.empty() || doc.empty()) continue;
    size_t end = closing_line(lines, i, true);
    if (end == std::string::npos) continue;
    add_braced(out, lines, i, end, "Go", receiver.empty() ? name : receiver + "." + name, doc);
    i = end;
  }
  return out;
}

std::vector<CodeFunction> c_family(const std::vector<std::string>& lines, const std::string& language) {
  static const char* control[] = {"if", "for", "while", "switch", "return", "else", "do", "case", "catch", "sizeof",
                                  "elif", "define", "typedef", "struct", "class", "namespace", "enum", "union"};
  std::vector<CodeFunction> out;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& line = lines[i];
    std::string t = trim(line);
    if (t.empty() || t[0] == '#' || t[0] == '/' || t[0] == '*' || t[0] == '}' || t[0] == '{') continue;
    size_t paren = t.find('(');
    if (paren == std::string::npos || paren == 0 || t.find(';') < paren || t.find('=') < paren) continue;
    // The name: the identifier right before '(' (Class::method kept whole).
    size_t e = paren;
    while (e > 0 && t[e - 1] == ' ') --e;
    size_t b = e;
    while (b > 0 && (std::isalnum((unsigned char)t[b - 1]) || t[b - 1] == '_' || t[b - 1] == ':' || t[b - 1] == '~')) --b;
    std::string name = t.substr(b, e - b);
    if (name.empty() || b == 0) continue;  // a call statement, not a definition (no return type before it)
    std::string first_word = identifier_at(t, 0);
    if (std::find(std::begin(control), std::end(control), first_word) != std::end(control)) continue;
    if (std::find(std::begin(control), std::end(control), name) != std::end(control)) continue;
    // A definition: '{' before any ';' on this line or the next few (the signature may wrap).
    bool definition = false;
    for (size_t l = i; l < lines.size() && l < i + 6; ++l) {
      size_t brace = lines[l].find('{'), semi = lines[l].find(';');
      if (semi != std::string::npos && (brace == std::string::npos || semi < brace)) break;
      if (brace != std::string::npos) {
        definition = true;
        break;
      }
    }
    if (!definition) continue;
    auto doc = comment_above(lines, i);
    if (doc.empty()) continue;
    size_t end = closing_line(lines, i, false);
    if (end == std::string::npos) continue;
    add_braced(out, lines, i, end, language, name, doc);
    i = end;
  }
  return out;
}

std::string language_of(const std::string& e) {
  if (e == ".c" || e == ".h") return "C";
  if (e == ".cu" || e == ".cuh") return "CUDA";
  if (e == ".java") return "Java";
  if (e == ".js") return "JavaScript";
  if (e == ".ts") return "TypeScript";
  if (e == ".rs") return "Rust";
  if (e == ".cs") return "C#";
  if (e == ".kt") return "Kotlin";
  if (e == ".swift") return "Swift";
  if (e == ".scala") return "Scala";
  return "C++";
}

bool is_c_family(const std::string& e) {
  static const char* exts[] = {".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".cu", ".cuh",
                               ".java", ".js", ".ts", ".rs", ".cs", ".kt", ".swift", ".scala"};
  return std::find(std::begin(exts), std::end(exts), e) != std::end(exts);
}

}  // namespace

bool is_code_file(const std::string& source) {
  const std::string e = extension(source);
  return e == ".py" || e == ".go" || is_c_family(e);
}

std::vector<CodeFunction> documented_functions(const std::string& source, const std::string& text) {
  const std::string e = extension(source);
  auto lines = lines_of(text);
  if (e == ".py") return python(lines);
  if (e == ".go") return go(lines);
  if (is_c_family(e)) return c_family(lines, language_of(e));
  return {};
}

}  // namespace cw
