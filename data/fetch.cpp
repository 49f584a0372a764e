// Implementation of data/fetch.h.
#include "data/fetch.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <iostream>

#include "common/error.h"
#include "common/files.h"

namespace cw {

const std::vector<CorpusSpec>& known_corpora() {
  static const std::vector<CorpusSpec> c = {
      {"pydocs", "python3.11-doc", "usr/share/doc/python3.11/html/_sources", {}, "Python 3.11 docs, reST (PSF)"},
      {"linuxdocs", "linux-doc-6.1", "usr/share/doc/linux-doc-6.1/Documentation", {"translations"},
       "Linux 6.1 kernel docs, reST, gzip (GPL-2)"},
      {"pgdocs", "postgresql-doc-15", "usr/share/doc/postgresql-doc-15/html", {}, "PostgreSQL 15 manual, HTML"},
      {"sqlitedocs", "sqlite3-doc", "usr/share/doc/sqlite3", {}, "SQLite docs, HTML (public domain)"},
      {"gosrc", "golang-1.19-src", "usr/share/go-1.19/src", {"testdata"}, "Go 1.19 standard library source"},
  };
  return c;
}

fs::path default_corpus_cache() { return expand_user("~/.cache/chunkwise/corpora"); }

static std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

fs::path fetch_corpus(const std::string& name, const fs::path& cache, bool quiet) {
  const CorpusSpec* spec = nullptr;
  for (auto& c : known_corpora()) if (c.name == name) spec = &c;
  if (!spec) {
    std::string names;
    for (auto& c : known_corpora()) names += (names.empty() ? "" : ", ") + c.name;
    fail("unknown corpus '", name, "'; known: ", names);
  }
  fs::path root = cache / name, text = root / "text", ready = root / "READY";
  if (fs::exists(ready) && fs::exists(text)) return text;
  fs::path work = root / (".work-" + std::to_string(::getpid()));
  remove_tree(work);
  fs::create_directories(work);
  if (!quiet) std::cerr << "fetching " << spec->package << " from the Debian archive into " << root << "\n";
  std::string cmd = "cd " + shell_quote(work.string()) + " && apt-get download -q " + spec->package +
                    " >apt.log 2>&1 && dpkg-deb -x " + spec->package + "_*.deb x >>apt.log 2>&1";
  int rc = std::system(cmd.c_str());
  if (rc != 0) {
    std::string log = fs::exists(work / "apt.log") ? read_file(work / "apt.log") : "";
    remove_tree(work);
    fail("could not fetch ", spec->package, ": apt-get download failed. Run `apt-get update` once (as root) and "
         "check that Debian's archive is reachable.\n", log);
  }
  fs::path sub = work / "x" / spec->subdir;
  check(fs::exists(sub), spec->package, " does not contain ", spec->subdir);
  std::function<void(const fs::path&)> drop_excluded = [&](const fs::path& dir) {
    for (auto& e : list_dir(dir)) {
      if (!e.is_dir) continue;
      if (std::find(spec->exclude.begin(), spec->exclude.end(), e.path.filename()) != spec->exclude.end())
        remove_tree(e.path);
      else drop_excluded(e.path);
    }
  };
  drop_excluded(sub);
  remove_tree(text);
  fs::rename(sub, text);
  remove_tree(work);
  write_file_atomic(ready, spec->package + "\n");
  return text;
}

}  // namespace cw
