#include "core/error.hpp"

#include <fmt/format.h>

namespace moelab {

namespace {

// An error is one line: control characters that came from user input (a key holding a newline,
// a file name with a tab) are shown as \xNN instead of breaking the line.
std::string one_line(std::string_view msg) {
  std::string out;
  out.reserve(msg.size());
  for (const char c : msg) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
      out += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
    else
      out += c;
  }
  return out;
}

}  // namespace

void fail(std::string_view msg) {
  throw Error(one_line(msg));
}

void fail_at(std::string_view msg, std::source_location loc) {
  throw Error(one_line(fmt::format("{}:{}: check failed: {}", loc.file_name(), loc.line(), msg)));
}

}  // namespace moelab
