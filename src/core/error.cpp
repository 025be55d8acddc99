#include "core/error.hpp"

#include <fmt/format.h>

namespace moelab {

void fail(std::string_view msg) {
  throw Error(std::string(msg));
}

void fail_at(std::string_view msg, std::source_location loc) {
  throw Error(fmt::format("{}:{}: check failed: {}", loc.file_name(), loc.line(), msg));
}

}  // namespace moelab
