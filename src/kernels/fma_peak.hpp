#pragma once
// The machine's measured floating-point peak, the denominator of the reported utilisation.

namespace moelab {

// Measured fp32 FMA peak in GFLOP/s with `threads` threads (a register-only FMA loop).
double bench_fma_peak_gflops(int threads, double seconds = 0.5);

}  // namespace moelab
