// JSON for config files, manifests and metrics (nlohmann::json), with a guard for untrusted input.
// Must not: parse untrusted bytes without parse_json_checked (deep nesting would exhaust the stack).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace cw {

using json = nlohmann::json;

// Parses TEXT; rejects nesting deeper than MAX_DEPTH and malformed JSON with a UserError naming WHAT.
json parse_json_checked(const std::string& text, const std::string& what, int max_depth = 64);

}  // namespace cw
