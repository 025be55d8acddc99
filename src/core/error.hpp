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

// Text from the user or a file as it may stand in a one-line message: control characters shown
// as \xNN, and cut to at most max_bytes (at a character boundary, marked "...").
std::string one_line(std::string_view text, size_t max_bytes = std::string_view::npos);

// Throws Error(one_line(msg)): an error is one line whatever the input put into it.
[[noreturn]] void fail(std::string_view msg);
[[noreturn]] void fail_at(std::string_view msg, std::source_location loc);

// Internal invariant: prints file:line, like llm.c's check macros but without a macro.
inline void check(bool ok, std::string_view what,
                  std::source_location loc = std::source_location::current()) {
  if (!ok) fail_at(what, loc);
}

}  // namespace moelab
