#pragma once
#include <cstdint>

namespace moelab {

double time_now_s();       // monotonic seconds
int64_t peak_rss_bytes();  // high-water resident set size of this process

}  // namespace moelab
