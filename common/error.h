// Errors that a user can fix (bad recipe, corrupt file, wrong tokenizer) versus bugs.
// UserError carries a message that says what is wrong and what to do; the CLI prints it and exits 2.
// Must not: carry stack traces or be used for internal invariants (use assertions / std::logic_error).
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace cw {

struct UserError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Builds a message from stream-able parts: fail("key ", k, " is not allowed").
template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw UserError(os.str());
}

template <typename... Parts>
void check(bool ok, const Parts&... parts) {
  if (!ok) fail(parts...);
}

}  // namespace cw
