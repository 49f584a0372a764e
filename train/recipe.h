// Recipes: INI files read with Boost.Program_options, overridable as --section.key=value, extendable
// with a top-level `extends = base.ini`. One table (recipe_keys.cpp) lists every key with its type,
// default and help; it drives parsing, `--help`, error messages and docs/recipes.md.
// Must not: accept a key or value the table does not allow, or lose track of which file set a value.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace cw {

enum class KeyType { Int, Float, String, Bool };

// The values a numeric key allows: lo..hi, each end included unless marked open.
struct KeyRange {
  double lo = -1e300, hi = 1e300;
  bool lo_open = false, hi_open = false;
  bool holds(double v) const { return (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi); }
  std::string text() const;  // ">= 0", "> 0", "in [0, 1)"
};

struct KeySpec {
  std::string name;           // "section.key"
  KeyType type;
  std::string default_value;  // as written in an INI file
  std::string help;
  std::vector<std::string> choices;  // for strings: allowed values (empty = any)
  KeyRange range = {};               // for numbers (set from the table's ranges in recipe_keys.cpp)
};

const std::vector<KeySpec>& recipe_keys();
const KeySpec* find_key(const std::string& name);
std::string key_type_name(KeyType t);
std::string recipe_keys_markdown();  // the table of docs/recipes.md
std::string recipe_keys_help();      // the table for `chunkwise train --help`

class Recipe {
 public:
  // Reads FILE (and the files it extends), then applies OVERRIDES ("--section.key=value" or
  // "section.key=value"; overrides win over files, a file over the file it extends, a later override
  // over an earlier one).
  static Recipe load(const std::filesystem::path& file, const std::vector<std::string>& overrides = {});
  // Parses resolved INI text (as saved in checkpoints).
  static Recipe from_text(const std::string& text, const std::string& what);

  int64_t i(const std::string& key) const;
  double f(const std::string& key) const;
  bool b(const std::string& key) const;
  const std::string& s(const std::string& key) const;
  std::string origin(const std::string& key) const;  // "default", a file path or "command line"
  void set(const std::string& key, const std::string& value);  // for tests and tools; validated
  std::string resolved_ini() const;  // every key, grouped in sections, reloadable by from_text
  const std::filesystem::path& file() const { return file_; }

 private:
  // Command-line overrides may repeat a key (the last wins); a file may not.
  void apply_source(const std::string& text, const std::string& what, bool repeats_allowed);
  std::map<std::string, std::string> values_;  // validated text per key
  std::map<std::string, std::string> origin_;
  std::filesystem::path file_;
};

}  // namespace cw
