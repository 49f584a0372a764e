// Implementation of train/recipe.h. Boost.Program_options parses the INI syntax (sections, duplicate and
// unknown keys); values are then checked against the key table with messages that name key and file.
#include "train/recipe.h"

#include <boost/program_options.hpp>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/files.h"

namespace po = boost::program_options;

namespace cw {

namespace {

po::options_description table_description() {
  po::options_description desc;
  desc.add_options()("extends", po::value<std::string>(), "base recipe");
  for (auto& k : recipe_keys()) desc.add_options()(k.name.c_str(), po::value<std::string>(), k.help.c_str());
  return desc;
}

std::string allowed_in_section(const std::string& key) {
  std::string section = key.substr(0, key.find('.'));
  std::string out;
  for (auto& k : recipe_keys())
    if (k.name.rfind(section + ".", 0) == 0) out += (out.empty() ? "" : ", ") + k.name;
  if (out.empty()) {
    std::set<std::string> sections;
    for (auto& k : recipe_keys()) sections.insert(k.name.substr(0, k.name.find('.')));
    for (auto& s : sections) out += (out.empty() ? "sections: [" : ", [") + s + "]";
    return out;
  }
  return "keys of [" + section + "]: " + out;
}

// Returns the canonical text of VALUE for KEY, or fails naming WHERE.
std::string validate(const KeySpec& k, std::string value, const std::string& where) {
  auto trim = [](std::string s) {
    size_t a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t");
    return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
  };
  value = trim(value);
  if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
  auto bad = [&](const std::string& expect) {
    fail(where, ": ", k.name, " = '", value, "' is not ", expect, " (", k.help, ")");
  };
  switch (k.type) {
    case KeyType::Int: {
      errno = 0;
      char* end = nullptr;
      long long v = std::strtoll(value.c_str(), &end, 10);
      if (value.empty() || *end || errno) bad("an integer");
      if (!k.range.holds(double(v))) bad("an integer " + k.range.text());
      return std::to_string(v);
    }
    case KeyType::Float: {
      errno = 0;
      char* end = nullptr;
      double v = std::strtod(value.c_str(), &end);
      if (value.empty() || *end || errno || !std::isfinite(v)) bad("a finite number");
      if (!k.range.holds(v)) bad("a number " + k.range.text());
      return value;
    }
    case KeyType::Bool: {
      static const std::set<std::string> yes = {"true", "1", "yes", "on"}, no = {"false", "0", "no", "off"};
      if (yes.count(value)) return "true";
      if (no.count(value)) return "false";
      bad("true or false");
      return value;  // not reached: bad() throws
    }
    case KeyType::String:
      if (!k.choices.empty()) {
        for (auto& c : k.choices) if (c == value) return value;
        std::string allowed;
        for (auto& c : k.choices) allowed += (allowed.empty() ? "" : ", ") + c;
        bad("one of: " + allowed);
      }
      return value;
  }
  return value;
}

po::parsed_options parse_ini(const std::string& text, const std::string& what) {
  std::istringstream in(text);
  try {
    return po::parse_config_file(in, table_description(), /*allow_unregistered=*/false);
  } catch (const po::unknown_option& e) {
    std::string key = e.get_option_name();
    fail(what, ": unknown recipe key '", key, "'; ", allowed_in_section(key),
         " (see `chunkwise train --help` or docs/recipes.md)");
  } catch (const po::error& e) {
    fail(what, ": ", e.what());
  }
}

std::string extends_of(const po::parsed_options& parsed) {
  for (auto& o : parsed.options)
    if (o.string_key == "extends" && !o.value.empty()) return o.value.front();
  return {};
}

}  // namespace

void Recipe::apply_source(const std::string& text, const std::string& what, bool repeats_allowed) {
  po::parsed_options parsed = parse_ini(text, what);
  std::set<std::string> seen;
  for (auto& o : parsed.options) {
    if (o.string_key == "extends") continue;
    check(seen.insert(o.string_key).second || repeats_allowed, what, ": key '", o.string_key, "' is set twice");
    const KeySpec* k = find_key(o.string_key);
    values_[k->name] = validate(*k, o.value.empty() ? "" : o.value.front(), what);
    origin_[k->name] = what;
  }
}

Recipe Recipe::load(const std::filesystem::path& file, const std::vector<std::string>& overrides) {
  Recipe r;
  for (auto& k : recipe_keys()) r.values_[k.name] = k.default_value, r.origin_[k.name] = "default";
  r.file_ = file;
  // Chain of files: FILE, its base, the base's base... applied base-most first.
  std::vector<std::pair<std::string, std::string>> chain;  // (path, text)
  std::set<std::string> visited;
  fs::path cur = file;
  while (!cur.empty()) {
    check(fs::exists(cur), "recipe file not found: ", cur.string(),
          chain.empty() ? "" : " (named by `extends` in " + chain.back().first + ")");
    std::string canon = fs::weakly_canonical(cur).string();
    check(visited.insert(canon).second, "recipe ", cur.string(), " extends itself (cycle through ", canon, ")");
    std::string text = read_file(cur);
    std::string base = extends_of(parse_ini(text, cur.string()));
    chain.emplace_back(cur.string(), text);
    cur = base.empty() ? fs::path() : (fs::path(base).is_absolute() ? fs::path(base) : cur.parent_path() / base);
  }
  for (auto it = chain.rbegin(); it != chain.rend(); ++it) r.apply_source(it->second, it->first, false);
  std::string ini;
  for (auto o : overrides) {
    if (o.rfind("--", 0) == 0) o = o.substr(2);
    size_t eq = o.find('=');
    check(eq != std::string::npos, "command line: override '", o, "' must look like --section.key=value");
    std::string key = o.substr(0, eq);
    check(key.find('.') != std::string::npos, "command line: override '", o, "' must name section.key");
    ini += "[" + key.substr(0, key.find('.')) + "]\n" + key.substr(key.find('.') + 1) + "=" + o.substr(eq + 1) + "\n";
  }
  if (!ini.empty()) r.apply_source(ini, "command line", true);
  return r;
}

Recipe Recipe::from_text(const std::string& text, const std::string& what) {
  Recipe r;
  for (auto& k : recipe_keys()) r.values_[k.name] = k.default_value, r.origin_[k.name] = "default";
  r.apply_source(text, what, false);
  r.file_ = what;
  return r;
}

static const std::string& lookup(const std::map<std::string, std::string>& m, const std::string& key) {
  auto it = m.find(key);
  if (it == m.end()) throw std::logic_error("recipe key not in the table: " + key);
  return it->second;
}

int64_t Recipe::i(const std::string& key) const { return std::stoll(lookup(values_, key)); }
double Recipe::f(const std::string& key) const { return std::stod(lookup(values_, key)); }
bool Recipe::b(const std::string& key) const { return lookup(values_, key) == "true"; }
const std::string& Recipe::s(const std::string& key) const { return lookup(values_, key); }
std::string Recipe::origin(const std::string& key) const { return lookup(origin_, key); }

void Recipe::set(const std::string& key, const std::string& value) {
  const KeySpec* k = find_key(key);
  check(k != nullptr, "unknown recipe key '", key, "'; ", allowed_in_section(key));
  values_[key] = validate(*k, value, "set");
  origin_[key] = "set";
}

std::string Recipe::resolved_ini() const {
  std::ostringstream os;
  std::string section;
  for (auto& k : recipe_keys()) {
    std::string sec = k.name.substr(0, k.name.find('.'));
    if (sec != section) os << (section.empty() ? "" : "\n") << "[" << (section = sec) << "]\n";
    os << k.name.substr(k.name.find('.') + 1) << " = " << values_.at(k.name) << "\n";
  }
  return os.str();
}

}  // namespace cw
