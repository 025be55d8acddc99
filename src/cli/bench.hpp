#pragma once
#include <string>
#include <vector>

#include "core/sysinfo.hpp"

namespace moelab {

struct BenchTrainOptions {
  std::string config;
  int steps = 10;
  int warmup = 2;
  int threads = 0;                  // 0 = all cores
  double peak_gflops = 0;           // fp32 FMA peak; 0 = measure
  double bf16_peak_gflops = 0;      // bf16 dot-product peak (bf16 runs); 0 = measure
  bool profile = false;             // per-op time breakdown
  bool bf16 = false;                // linear layers in bf16 (fp32 master weights)
  std::vector<std::string> freeze;  // regexes of tensors not trained (as [train] freeze)
};
// Runs the training benchmark and prints one JSON line.
void bench_train(const BenchTrainOptions& o);

// Measures the fp32 FMA and bf16 dot-product peaks on `threads` threads and prints one JSON line
// (bf16_peak_gflops null where the CPU lacks AVX512-BF16).
void bench_peak(int threads);

struct BenchEvalOptions {
  std::string config;      // a bench JSON (its "model"), random weights
  std::string checkpoint;  // or a checkpoint folder: its config and weights
  int64_t samples = 256, batch = 64, prompt = 32, generate = 32;
  int threads = 0;
  bool profile = false;  // per-part time of the whole evaluation (stderr and JSON)
};
// Greedy decoding throughput with the KV cache (the M_in / M_ex workload); one JSON line.
void bench_eval(const BenchEvalOptions& o);

}  // namespace moelab
