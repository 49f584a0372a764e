// Implementation of data/corpus.h.
#include "data/corpus.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"

namespace cw {

namespace {

const std::set<std::string> kTextExt = {".txt", ".md", ".markdown", ".rst", ".text", ".py", ".c", ".h",
                                        ".cc", ".cpp", ".hpp", ".cu", ".go", ".rs", ".java", ".js", ".ts",
                                        ".sh", ".tex"};
const std::set<std::string> kHtmlExt = {".html", ".htm", ".xhtml"};

std::string strip_gz(const std::string& path) {
  return path.size() > 3 && path.compare(path.size() - 3, 3, ".gz") == 0 ? path.substr(0, path.size() - 3) : path;
}
std::string ext_of(const std::string& path) { return fs::path(strip_gz(path)).extension().string(); }

std::string read_maybe_gz(const fs::path& path) {
  if (path.extension() != ".gz") return read_file(path);
  gzFile g = gzopen(path.c_str(), "rb");
  check(g != nullptr, "cannot open ", path.string());
  std::string out;
  char buf[1 << 16];
  int n;
  while ((n = gzread(g, buf, sizeof buf)) > 0) out.append(buf, size_t(n));
  int err = 0;
  const char* msg = gzerror(g, &err);
  std::string m = msg ? msg : "";
  gzclose(g);
  check(n == 0 && (err == Z_OK || err == Z_STREAM_END), path.string(), ": corrupt gzip data (", m, ")");
  return out;
}

bool blank(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isspace(c); });
}

void read_jsonl(const fs::path& path, const std::string& rel, const std::function<void(Document&&)>& visit) {
  std::istringstream in(read_maybe_gz(path));
  std::string line;
  size_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (blank(line)) continue;
    json j = parse_json_checked(line, path.string() + ":" + std::to_string(lineno));
    check(j.is_object() && j.contains("text") && j["text"].is_string(), path.string(), ":", lineno,
          ": each JSONL line must be an object with a string field \"text\"");
    Document d{rel + ":" + std::to_string(lineno), sanitize_utf8(j["text"].get<std::string>())};
    if (!blank(d.text)) visit(std::move(d));
  }
}

void read_one(const fs::path& path, const std::string& rel, const std::function<void(Document&&)>& visit,
              bool keep_html) {
  std::string e = ext_of(path.string());
  if (e == ".jsonl") return read_jsonl(path, rel, visit);
  std::string text = read_maybe_gz(path);
  if (kHtmlExt.count(e) && !keep_html) text = html_to_text(text);
  Document d{rel, sanitize_utf8(text)};
  if (!blank(d.text)) visit(std::move(d));
}

}  // namespace

bool is_corpus_file(const std::string& path) {
  std::string e = ext_of(path);
  return kTextExt.count(e) || kHtmlExt.count(e) || e == ".jsonl";
}

void for_each_document(const std::vector<std::string>& inputs, const std::function<void(Document&&)>& visit,
                       bool keep_html) {
  check(!inputs.empty(), "no input files or folders given");
  for (auto& input : inputs) {
    fs::path root = expand_user(input);
    check(fs::exists(root), "input not found: ", input);
    if (fs::is_regular_file(root)) {
      read_one(root, root.filename().string(), visit, keep_html);
      continue;
    }
    std::vector<fs::path> files;
    for (auto& f : list_files_recursive(root))
      if (is_corpus_file(f.string())) files.push_back(f);
    std::sort(files.begin(), files.end());
    check(!files.empty(), "no corpus files (text, Markdown, reST, HTML, source, JSONL) under ", input);
    for (auto& f : files) read_one(f, fs::relative(f, root).string(), visit, keep_html);
  }
}

std::vector<Document> read_documents(const std::vector<std::string>& inputs) {
  std::vector<Document> docs;
  for_each_document(inputs, [&](Document&& d) { docs.push_back(std::move(d)); });
  return docs;
}

std::string sanitize_utf8(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size(), i = 0;
  while (i < n) {
    unsigned char c = p[i];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    bool ok = len > 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) ok = (p[i + k] >> 6) == 2;
    if (ok && len == 2) ok = c >= 0xC2;
    if (ok && len == 3) {
      unsigned cp = ((c & 0xF) << 12) | ((p[i + 1] & 0x3F) << 6) | (p[i + 2] & 0x3F);
      ok = cp >= 0x800 && !(cp >= 0xD800 && cp <= 0xDFFF);
    }
    if (ok && len == 4) {
      unsigned cp = ((c & 7) << 18) | ((p[i + 1] & 0x3F) << 12) | ((p[i + 2] & 0x3F) << 6) | (p[i + 3] & 0x3F);
      ok = cp >= 0x10000 && cp <= 0x10FFFF;
    }
    if (ok && c == 0) ok = false;  // NUL bytes are not text
    if (ok) {
      out.append(s, i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      i += 1;
    }
  }
  return out;
}

static void append_codepoint(std::string& out, unsigned long cp) {
  if (cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 0xFFFD;
  if (cp < 0x80) out += char(cp);
  else if (cp < 0x800) out += char(0xC0 | (cp >> 6)), out += char(0x80 | (cp & 0x3F));
  else if (cp < 0x10000)
    out += char(0xE0 | (cp >> 12)), out += char(0x80 | ((cp >> 6) & 0x3F)), out += char(0x80 | (cp & 0x3F));
  else
    out += char(0xF0 | (cp >> 18)), out += char(0x80 | ((cp >> 12) & 0x3F)),
        out += char(0x80 | ((cp >> 6) & 0x3F)), out += char(0x80 | (cp & 0x3F));
}

std::string html_to_text(const std::string& html) {
  static const std::set<std::string> block = {"p", "div", "br", "li", "ul", "ol", "tr", "table", "pre", "h1",
                                              "h2", "h3", "h4", "h5", "h6", "dt", "dd", "dl", "section",
                                              "blockquote", "hr", "title", "article", "header", "footer"};
  static const std::pair<const char*, const char*> entities[] = {
      {"amp", "&"}, {"lt", "<"}, {"gt", ">"}, {"quot", "\""}, {"apos", "'"}, {"nbsp", " "},
      {"mdash", "\xE2\x80\x94"}, {"ndash", "\xE2\x80\x93"}, {"hellip", "\xE2\x80\xA6"}, {"copy", "\xC2\xA9"},
      {"rsquo", "\xE2\x80\x99"}, {"lsquo", "\xE2\x80\x98"}, {"rdquo", "\xE2\x80\x9D"}, {"ldquo", "\xE2\x80\x9C"}};
  std::string out;
  size_t i = 0, n = html.size();
  bool in_pre = false;
  while (i < n) {
    char c = html[i];
    if (c == '<') {
      if (html.compare(i, 4, "<!--") == 0) {
        size_t e = html.find("-->", i + 4);
        i = e == std::string::npos ? n : e + 3;
        continue;
      }
      size_t e = html.find('>', i);
      if (e == std::string::npos) break;
      std::string tag = html.substr(i + 1, e - i - 1);
      bool closing = !tag.empty() && tag[0] == '/';
      std::string name;
      for (size_t k = closing; k < tag.size() && (std::isalnum((unsigned char)tag[k])); ++k)
        name += char(std::tolower((unsigned char)tag[k]));
      i = e + 1;
      if (!closing && (name == "script" || name == "style")) {
        size_t end = html.find("</" + name, i);
        i = end == std::string::npos ? n : html.find('>', end) + 1;
        if (i == 0) i = n;
        continue;
      }
      if (name == "pre") in_pre = !closing;
      if (block.count(name) && (out.empty() || out.back() != '\n')) out += '\n';
      continue;
    }
    if (c == '&') {
      size_t semi = html.find(';', i);
      if (semi != std::string::npos && semi - i <= 10) {
        std::string ent = html.substr(i + 1, semi - i - 1);
        bool done = false;
        if (!ent.empty() && ent[0] == '#') {
          bool hex = ent.size() > 1 && (ent[1] == 'x' || ent[1] == 'X');
          char* endp = nullptr;
          unsigned long cp = std::strtoul(ent.c_str() + (hex ? 2 : 1), &endp, hex ? 16 : 10);
          if (endp && *endp == 0 && ent.size() > (hex ? 2u : 1u)) append_codepoint(out, cp), done = true;
        } else {
          for (auto& [k, v] : entities) if (ent == k) { out += v; done = true; break; }
        }
        if (done) {
          i = semi + 1;
          continue;
        }
      }
    }
    if (!in_pre && (c == '\n' || c == '\r' || c == '\t')) c = ' ';
    if (!in_pre && c == ' ' && !out.empty() && (out.back() == ' ' || out.back() == '\n')) {
      ++i;
      continue;
    }
    out += c;
    ++i;
  }
  // collapse runs of blank lines
  std::string clean;
  int newlines = 0;
  for (char ch : out) {
    if (ch == '\n') {
      if (++newlines > 2) continue;
    } else newlines = 0;
    clean += ch;
  }
  return clean;
}

}  // namespace cw
