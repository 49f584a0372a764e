// Implementation of data/doc_sections.h.
#include "data/doc_sections.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <sstream>

#include "data/corpus.h"
#include "data/text_lines.h"

namespace cw {

namespace {


std::string lower_ext(std::string source) {
  auto lower = [](std::string s) {
    for (auto& c : s) c = char(std::tolower((unsigned char)c));
    return s;
  };
  source = lower(source);
  if (source.size() > 3 && source.compare(source.size() - 3, 3, ".gz") == 0) source.resize(source.size() - 3);
  size_t slash = source.find_last_of('/');
  std::string name = slash == std::string::npos ? source : source.substr(slash + 1);
  if (name.find(".rst") != std::string::npos) return ".rst";  // x.rst, x.rst.txt (Sphinx sources)
  size_t dot = name.find_last_of('.');
  return dot == std::string::npos ? "" : name.substr(dot);
}

std::string file_title(const std::string& source) {
  size_t slash = source.find_last_of('/');
  std::string name = slash == std::string::npos ? source : source.substr(slash + 1);
  size_t dot = name.find('.');
  return dot == std::string::npos || dot == 0 ? name : name.substr(0, dot);
}

// Sections being built: headings as a stack of (level, text).
struct Builder {
  StructuredDoc doc;
  std::vector<std::pair<int, std::string>> stack;
  std::string paragraph;
  Builder() { doc.sections.emplace_back(); }
  void flush() {
    std::string p = trim(paragraph);
    if (!p.empty()) doc.sections.back().paragraphs.push_back(p);
    paragraph.clear();
  }
  void add_line(const std::string& line) {
    if (!paragraph.empty()) paragraph += '\n';
    paragraph += line;
  }
  void heading(int level, const std::string& text, const std::string& anchor) {
    flush();
    while (!stack.empty() && stack.back().first >= level) stack.pop_back();
    stack.emplace_back(level, text);
    if (doc.title.empty() && level == 1) doc.title = text;
    DocSection s;
    for (auto& [l, t] : stack) s.headings.push_back(t);
    s.anchor = anchor.empty() ? slug(text) : anchor;
    doc.sections.push_back(std::move(s));
  }
  StructuredDoc finish(const std::string& source) {
    flush();
    if (doc.title.empty())
      for (auto& s : doc.sections)
        if (!s.headings.empty()) {
          doc.title = s.headings.front();
          break;
        }
    if (doc.title.empty()) doc.title = file_title(source);
    if (doc.sections.front().paragraphs.empty() && doc.sections.size() > 1) doc.sections.erase(doc.sections.begin());
    return std::move(doc);
  }
};

bool is_fence(const std::string& line, std::string* marker) {
  std::string t = trim(line);
  if (t.size() >= 3 && (t.compare(0, 3, "```") == 0 || t.compare(0, 3, "~~~") == 0)) {
    *marker = t.substr(0, 3);
    return true;
  }
  return false;
}

bool all_of_char(const std::string& s, char c, size_t min_len) {
  std::string t = trim(s);
  return t.size() >= min_len && std::all_of(t.begin(), t.end(), [c](char x) { return x == c; });
}

StructuredDoc markdown(const std::string& source, const std::string& text) {
  Builder b;
  auto lines = lines_of(text);
  std::string fence;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& line = lines[i];
    std::string marker;
    if (!fence.empty()) {  // inside a fenced block: verbatim, one paragraph
      b.add_line(line);
      if (is_fence(line, &marker) && marker == fence) fence.clear(), b.flush();
      continue;
    }
    if (is_fence(line, &marker)) {
      b.flush();
      fence = marker;
      b.add_line(line);
      continue;
    }
    if (i == 0 && trim(line) == "---") {  // front matter
      size_t j = i + 1;
      while (j < lines.size() && trim(lines[j]) != "---") ++j;
      if (j < lines.size()) {
        i = j;
        continue;
      }
    }
    size_t hashes = 0;
    while (hashes < line.size() && line[hashes] == '#') ++hashes;
    if (hashes >= 1 && hashes <= 6 && (hashes == line.size() || line[hashes] == ' ')) {
      std::string t = trim(line.substr(hashes));
      while (!t.empty() && t.back() == '#') t.pop_back();
      b.heading(int(hashes), trim(t), "");
      continue;
    }
    // Setext: one line of paragraph text underlined with = (level 1) or - (level 2).
    const bool one_line = !b.paragraph.empty() && b.paragraph.find('\n') == std::string::npos;
    if (one_line && (all_of_char(line, '=', 2) || all_of_char(line, '-', 2))) {
      std::string t = trim(b.paragraph);
      b.paragraph.clear();
      b.heading(all_of_char(line, '=', 2) ? 1 : 2, t, "");
      continue;
    }
    if (trim(line).empty()) {
      b.flush();
      continue;
    }
    if (b.paragraph.empty() && (all_of_char(line, '-', 3) || all_of_char(line, '*', 3))) continue;  // a rule
    b.add_line(line);
  }
  return b.finish(source);
}

size_t codepoints(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

bool rst_adornment(const std::string& line, char* c) {
  static const std::string chars = "=-~^\"'`#*+_:.<>";
  if (line.empty() || std::isspace((unsigned char)line[0])) return false;
  std::string t = trim(line);
  if (t.size() < 2 || chars.find(t[0]) == std::string::npos || !all_of_char(t, t[0], 2)) return false;
  *c = t[0];
  return true;
}

StructuredDoc rst(const std::string& source, const std::string& text) {
  Builder b;
  auto lines = lines_of(text);
  std::map<std::string, int> levels;  // adornment style -> level, in order of first use
  std::string label;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& line = lines[i];
    std::string t = trim(line);
    char c = 0, under = 0;
    // Overlined title: adornment, text, the same adornment.
    if (rst_adornment(line, &c) && i + 2 < lines.size() && !trim(lines[i + 1]).empty() &&
        rst_adornment(lines[i + 2], &under) && under == c && trim(lines[i + 2]).size() >= codepoints(trim(lines[i + 1]))) {
      std::string style = std::string("o") + c;
      if (!levels.count(style)) levels[style] = int(levels.size()) + 1;
      b.heading(levels[style], trim(lines[i + 1]), label);
      label.clear();
      i += 2;
      continue;
    }
    // Underlined title: text, then an adornment at least as long.
    if (!t.empty() && !std::isspace((unsigned char)line[0]) && b.paragraph.empty() && i + 1 < lines.size() &&
        rst_adornment(lines[i + 1], &under) && trim(lines[i + 1]).size() >= codepoints(t) &&
        !rst_adornment(line, &c)) {
      std::string style = std::string("u") + under;
      if (!levels.count(style)) levels[style] = int(levels.size()) + 1;
      b.heading(levels[style], t, label);
      label.clear();
      ++i;
      continue;
    }
    if (t.rfind(".. _", 0) == 0 && t.size() > 5 && t.back() == ':') {  // a label for the next title
      b.flush();
      label = t.substr(4, t.size() - 5);
      continue;
    }
    if (t.empty()) {
      b.flush();
      continue;
    }
    b.add_line(line);
  }
  return b.finish(source);
}

std::string attribute(const std::string& tag, const std::string& name) {
  std::string lower = tag;
  for (auto& ch : lower) ch = char(std::tolower((unsigned char)ch));
  for (size_t at = lower.find(name + "="); at != std::string::npos; at = lower.find(name + "=", at + 1)) {
    if (at > 0 && !std::isspace((unsigned char)lower[at - 1])) continue;
    size_t v = at + name.size() + 1;
    if (v >= tag.size()) return "";
    char q = tag[v];
    if (q == '"' || q == '\'') {
      size_t e = tag.find(q, v + 1);
      return e == std::string::npos ? "" : tag.substr(v + 1, e - v - 1);
    }
    size_t e = v;
    while (e < tag.size() && !std::isspace((unsigned char)tag[e]) && tag[e] != '>') ++e;
    return tag.substr(v, e - v);
  }
  return "";
}

// The position after the element named NAME whose opening tag ends before FROM (nested ones of the same
// name counted); the end of TEXT when it is never closed.
size_t skip_element(const std::string& text, size_t from, const std::string& name) {
  int depth = 1;
  for (size_t i = text.find('<', from); i != std::string::npos; i = text.find('<', i + 1)) {
    const bool closing = i + 1 < text.size() && text[i + 1] == '/';
    size_t n = i + 1 + closing, k = n;
    while (k < text.size() && std::isalnum((unsigned char)text[k])) ++k;
    std::string tag = text.substr(n, k - n);
    for (auto& ch : tag) ch = char(std::tolower((unsigned char)ch));
    if (tag != name) continue;
    size_t close = text.find('>', i);
    if (close == std::string::npos) return text.size();
    const bool self_closing = close > 0 && text[close - 1] == '/';
    if (closing) {
      if (--depth == 0) return close + 1;
    } else if (!self_closing) {
      ++depth;
    }
  }
  return text.size();
}

// Markers that pass through html_to_text: a heading line, and newlines kept inside <pre>.
constexpr char kHeading = '\x01', kField = '\x02', kPreNewline = '\x05';

StructuredDoc html(const std::string& source, const std::string& text) {
  // Pass 1: headings replaced by marker paragraphs carrying level, anchor and text; <pre> newlines marked.
  std::string marked;
  std::string last_id;
  bool in_pre = false;
  for (size_t i = 0; i < text.size();) {
    if (text[i] != '<') {
      marked += in_pre && text[i] == '\n' ? kPreNewline : text[i];
      ++i;
      continue;
    }
    size_t e = text.find('>', i);
    if (e == std::string::npos) {
      marked.append(text, i, std::string::npos);
      break;
    }
    std::string tag = text.substr(i + 1, e - i - 1);
    std::string name;
    for (size_t k = tag[0] == '/'; k < tag.size() && std::isalnum((unsigned char)tag[k]); ++k)
      name += char(std::tolower((unsigned char)tag[k]));
    const bool closing = !tag.empty() && tag[0] == '/';
    if (!closing) {
      std::string id = attribute(tag, "id");
      if (id.empty() && name == "a") id = attribute(tag, "name");
      if (!id.empty()) last_id = id;
    }
    // Page furniture, not content: the head, navigation bars, headers and footers.
    const std::string cls = closing ? "" : attribute(tag, "class");
    if (!closing && (name == "head" || name == "nav" || name == "header" || name == "footer" || name == "script" ||
                     name == "style" || ((name == "div" || name == "table") && cls.find("nav") != std::string::npos))) {
      size_t end = skip_element(text, e + 1, name);
      i = end;
      continue;
    }
    if (name == "pre") in_pre = !closing;
    if (!closing && name.size() == 2 && name[0] == 'h' && name[1] >= '1' && name[1] <= '6') {
      size_t end = text.find("</" + name, e);
      if (end == std::string::npos) end = text.find("</H" + name.substr(1), e);
      if (end != std::string::npos) {
        std::string inner = trim(html_to_text(text.substr(e + 1, end - e - 1)));
        for (auto& ch : inner)
          if (ch == '\n') ch = ' ';
        std::string id = attribute(tag, "id");
        // Anchors inside the heading (<h2><a id=...>) count too.
        std::string inner_html = text.substr(e + 1, end - e - 1);
        for (size_t a = inner_html.find('<'); id.empty() && a != std::string::npos; a = inner_html.find('<', a + 1)) {
          size_t ae = inner_html.find('>', a);
          if (ae == std::string::npos) break;
          std::string t = inner_html.substr(a + 1, ae - a - 1);
          id = attribute(t, "id");
          if (id.empty()) id = attribute(t, "name");
        }
        if (id.empty()) id = last_id;
        marked += "<p>";
        marked += kHeading;
        marked += name[1];
        marked += kField + id + kField + inner;
        marked += "</p>";
        size_t close = text.find('>', end);
        i = close == std::string::npos ? text.size() : close + 1;
        continue;
      }
    }
    marked.append(text, i, e + 1 - i);
    i = e + 1;
  }
  // Pass 2: the text, one block per line; heading lines start sections.
  Builder b;
  for (auto& line : lines_of(html_to_text(marked))) {
    std::string t = trim(line);
    if (t.empty()) continue;
    if (t[0] == kHeading && t.size() >= 2) {
      size_t f1 = t.find(kField), f2 = f1 == std::string::npos ? f1 : t.find(kField, f1 + 1);
      if (f2 != std::string::npos) {
        std::string heading = trim(t.substr(f2 + 1));
        if (!heading.empty()) b.heading(t[1] - '0', heading, t.substr(f1 + 1, f2 - f1 - 1));
        continue;
      }
    }
    for (auto& ch : t)
      if (ch == kPreNewline) ch = '\n';
    b.add_line(t);
    b.flush();  // every block is a paragraph
  }
  return b.finish(source);
}

StructuredDoc plain(const std::string& source, const std::string& text) {
  Builder b;
  for (auto& line : lines_of(text)) {
    if (trim(line).empty()) b.flush();
    else b.add_line(line);
  }
  return b.finish(source);
}

}  // namespace

std::string slug(const std::string& heading) {
  std::string out;
  for (unsigned char c : heading) {
    if (std::isalnum(c)) out += char(std::tolower(c));
    else if ((c == ' ' || c == '-') && !out.empty() && out.back() != '-') out += '-';
    else if (c >= 0x80) out += char(c);  // letters of other scripts stay
  }
  while (!out.empty() && out.back() == '-') out.pop_back();
  return out;
}

StructuredDoc split_structure(const std::string& source, const std::string& text) {
  const std::string e = lower_ext(source);
  if (e == ".md" || e == ".markdown") return markdown(source, text);
  if (e == ".rst") return rst(source, text);
  if (e == ".html" || e == ".htm" || e == ".xhtml") return html(source, text);
  return plain(source, text);
}

int64_t count_words(const std::string& text) {
  int64_t n = 0;
  bool in_word = false;
  for (unsigned char c : text) {
    const bool space = std::isspace(c);
    n += !space && !in_word;
    in_word = !space;
  }
  return n;
}

namespace {

std::vector<std::string> split_words(const std::string& text) {
  std::vector<std::string> words;
  std::istringstream in(text);
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

// Pieces of P of at most BUDGET tokens: between lines for text laid out in lines (code, tables), else at
// sentence ends; then between words.
std::vector<std::string> cut_paragraph(const std::string& p, int64_t budget, const TokenCounter& count) {
  std::vector<std::string> sentences;
  const bool lines = p.find('\n') != std::string::npos;
  const std::string joiner = lines ? "\n" : " ";
  size_t start = 0;
  for (size_t i = 0; i + 1 < p.size(); ++i) {
    const bool end = lines ? p[i] == '\n' : (p[i] == '.' || p[i] == '?' || p[i] == '!') && std::isspace((unsigned char)p[i + 1]);
    if (!end) continue;
    std::string piece = p.substr(start, i + 1 - start);
    if (lines) piece.pop_back();  // the newline
    else piece = trim(piece);
    sentences.push_back(piece);
    start = i + 1;
  }
  sentences.push_back(lines ? p.substr(start) : trim(p.substr(start)));
  std::vector<std::string> pieces;
  std::string cur;
  auto push = [&] {
    if (!cur.empty()) pieces.push_back(cur);
    cur.clear();
  };
  for (auto& s : sentences) {
    if (trim(s).empty() && !lines) continue;
    if (count(s) > budget) {  // a sentence too long: between words
      push();
      for (auto& w : split_words(s)) {
        std::string next = cur.empty() ? w : cur + " " + w;
        if (!cur.empty() && count(next) > budget) push(), next = w;
        cur = next;
      }
      push();
      continue;
    }
    std::string next = cur.empty() ? s : cur + joiner + s;
    if (!cur.empty() && count(next) > budget) push(), next = s;
    cur = next;
  }
  push();
  return pieces;
}

// The last words of TEXT adding up to at least OVERLAP tokens (all of it when shorter).
std::string tail_of(const std::string& text, int64_t overlap, const TokenCounter& count) {
  if (overlap <= 0) return "";
  auto words = split_words(text);
  std::string tail;
  for (size_t k = words.size(); k-- > 0;) {
    tail = tail.empty() ? words[k] : words[k] + " " + tail;
    if (count(tail) >= overlap) break;
  }
  return tail;
}

}  // namespace

std::vector<TextChunk> chunk_sections(const StructuredDoc& doc, int64_t budget, int64_t overlap,
                                      const TokenCounter& count) {
  std::vector<TextChunk> chunks;
  if (budget <= 0) return chunks;
  overlap = std::min(overlap, budget / 2);
  for (size_t s = 0; s < doc.sections.size(); ++s) {
    std::vector<std::string> pieces;
    for (auto& p : doc.sections[s].paragraphs) {
      if (count(p) <= budget) pieces.push_back(p);
      else
        for (auto& piece : cut_paragraph(p, budget - overlap, count)) pieces.push_back(piece);
    }
    std::string cur;
    bool has_new = false;  // CUR holds more than the overlap carried in
    auto emit = [&] {
      if (!has_new) return;
      chunks.push_back({s, cur, count(cur)});
      cur = tail_of(cur, overlap, count);
      has_new = false;
    };
    for (auto& piece : pieces) {
      std::string next = cur.empty() ? piece : cur + "\n\n" + piece;
      if (has_new && count(next) > budget) {
        emit();
        next = cur.empty() ? piece : cur + "\n\n" + piece;
        if (count(next) > budget) next = piece;  // the overlap does not fit beside this piece
      }
      cur = next;
      has_new = true;
    }
    emit();
  }
  return chunks;
}

}  // namespace cw
