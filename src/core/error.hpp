#pragma once
// Errors. Two kinds: a user error (bad config, bad flag, bad file) is one line naming the field,
// flag or file; an internal check failure also names the source file and line that caught it.
#include <source_location>
#include <stdexcept>
#include <string>
#include <string_view>

namespace moelab {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fail(std::string_view msg);
[[noreturn]] void fail_at(std::string_view msg, std::source_location loc);

// Internal invariant: prints file:line, like llm.c's check macros but without a macro.
inline void check(bool ok, std::string_view what,
                  std::source_location loc = std::source_location::current()) {
  if (!ok) fail_at(what, loc);
}

}  // namespace moelab
