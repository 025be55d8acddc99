#include "core/sysinfo.hpp"

#include <fmt/format.h>

#include <cmath>

#include <sys/resource.h>

#include <chrono>

namespace moelab {

double time_now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

std::string duration_format(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) {
    return "?";
  }
  const int64_t s = int64_t(seconds);
  return fmt::format("{}:{:02d}:{:02d}", s / 3600, (s / 60) % 60, s % 60);
}

int64_t peak_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return int64_t(ru.ru_maxrss) * 1024;  // Linux reports KiB
}

}  // namespace moelab
