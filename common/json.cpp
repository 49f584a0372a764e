// Implementation of common/json.h.
#include "common/json.h"

#include "common/error.h"

namespace cw {

json parse_json_checked(const std::string& text, const std::string& what, int max_depth) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '[' || c == '{') {
      if (++depth > max_depth) fail(what, ": JSON nested deeper than ", max_depth, " levels");
    } else if (c == ']' || c == '}') --depth;
  }
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail(what, ": invalid JSON (", e.what(), ")");
  }
}

}  // namespace cw
