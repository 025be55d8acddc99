#pragma once
#include <string>

namespace moelab {

// Measured fp32 FMA peak in GFLOP/s with `threads` threads (a register-only FMA loop).
double bench_fma_peak_gflops(int threads, double seconds = 0.5);

struct BenchTrainOptions {
  std::string config;
  int steps = 10;
  int warmup = 2;
  int threads = 0;         // 0 = all cores
  double peak_gflops = 0;  // 0 = measure
  bool profile = false;    // per-op time breakdown
  bool bf16 = false;       // linear layers in bf16 (fp32 master weights)
};
// Runs the training benchmark and prints one JSON line.
void bench_train(const BenchTrainOptions& o);

}  // namespace moelab
