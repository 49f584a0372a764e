// Named real corpora fetched from Debian's archive: `apt-get download` + `dpkg-deb -x` into a cache
// folder, keeping only the text subtree. No root needed, nothing installed system-wide.
// Must not: touch anything outside the cache folder.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

namespace cw {

struct CorpusSpec {
  std::string name;
  std::string package;
  std::string subdir;                 // text subtree inside the package
  std::vector<std::string> exclude;   // subfolders removed after extraction
  std::string description;
};

const std::vector<CorpusSpec>& known_corpora();
std::filesystem::path default_corpus_cache();  // ~/.cache/chunkwise/corpora
// Returns the folder holding the corpus text (fetching it unless already there).
std::filesystem::path fetch_corpus(const std::string& name, const std::filesystem::path& cache, bool quiet = false);

}  // namespace cw
