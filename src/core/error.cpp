#include "core/error.hpp"

#include <fmt/format.h>

namespace moelab {

std::string one_line(std::string_view text, size_t max_bytes) {
  bool cut = false;
  if (text.size() > max_bytes) {
    size_t n = max_bytes;
    while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) n--;  // UTF-8 start
    text = text.substr(0, n);
    cut = true;
  }
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
      out += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
    else
      out += c;
  }
  return cut ? out + "..." : out;
}

void fail(std::string_view msg) {
  throw Error(one_line(msg));
}

void fail_at(std::string_view msg, std::source_location loc) {
  throw Error(one_line(fmt::format("{}:{}: check failed: {}", loc.file_name(), loc.line(), msg)));
}

}  // namespace moelab
