#pragma once
// Numbers spelled on the command line or in a short spec ("sparse:0.9", "1,3"): the whole text
// must be the number.
#include <charconv>
#include <string_view>
#include <system_error>

namespace moelab {

// The whole of s as a number, or false (empty, trailing characters, out of range).
template <typename N>
bool parse_number(std::string_view s, N& v) {
  if (s.empty()) return false;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc() && end == s.data() + s.size();
}

}  // namespace moelab
