#pragma once
#include <cstdint>
#include <string>

namespace moelab {

double time_now_s();  // monotonic seconds
// "H:MM:SS" of a duration in seconds (an ETA); "?" where it is unknown (not finite or negative).
std::string duration_format(double seconds);
int64_t peak_rss_bytes();  // high-water resident set size of this process

}  // namespace moelab
