#pragma once
#include <cstdint>

namespace moelab {

double time_now_s();       // monotonic seconds
int64_t peak_rss_bytes();  // high-water resident set size of this process

// Measured fp32 FMA peak in GFLOP/s with `threads` threads (a register-only FMA loop).
double bench_fma_peak_gflops(int threads, double seconds = 0.5);

}  // namespace moelab
