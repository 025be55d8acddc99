#include "kernels/fma_peak.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "core/sysinfo.hpp"

#if !defined(__x86_64__)
#error "moelab's peak loops are x86-64 (AVX2+FMA, AVX-512)"
#endif

namespace moelab {

// ----------------------------------------------------------------------------
// Peaks: independent accumulator chains in registers, enough to cover the latency of the
// instruction on every pipe that runs it. Each loop carries its own target attribute and is
// chosen by the CPU's features at run time, so that a portable build (-march=x86-64-v3) measures
// the same peaks as a native one, and a binary built with -march=native on an AVX512-BF16 machine
// still runs where the instruction is missing (it reports no bf16 peak there).

namespace {

// 12 chains: more than latency x issue rate of FMA and VDPBF16PS on current x86 cores (8 already
// reach the same peak on the AMD EPYC of docs/benchmarks.md). Calls of 2^20 iterations (a few ms):
// the best of many short calls is the peak even on a host where other processes take the core at
// times.
constexpr int kAcc = 12;
constexpr int64_t kIters = int64_t(1) << 20;

__attribute__((target("avx2,fma"))) float fma_loop_avx2(int64_t iters) {
  __m256 acc[kAcc];
  for (int i = 0; i < kAcc; i++) {
    acc[i] = _mm256_set1_ps(float(i) * 1e-3f);
  }
  const __m256 a = _mm256_set1_ps(0.999999f);
  const __m256 b = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; it++) {
    for (int i = 0; i < kAcc; i++) {
      acc[i] = _mm256_fmadd_ps(acc[i], a, b);
    }
  }
  alignas(32) float t[8];
  float s = 0;
  for (int i = 0; i < kAcc; i++) {
    _mm256_store_ps(t, acc[i]);
    for (float x : t) {
      s += x;
    }
  }
  return s;
}

__attribute__((target("avx512f"))) float fma_loop_avx512(int64_t iters) {
  __m512 acc[kAcc];
  for (int i = 0; i < kAcc; i++) {
    acc[i] = _mm512_set1_ps(float(i) * 1e-3f);
  }
  const __m512 a = _mm512_set1_ps(0.999999f);
  const __m512 b = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; it++) {
    for (int i = 0; i < kAcc; i++) {
      acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    }
  }
  // A store and a scalar sum: GCC 12's _mm512_reduce_add_ps warns outside -mavx512f builds.
  alignas(64) float t[16];
  float s = 0;
  for (int i = 0; i < kAcc; i++) {
    _mm512_store_ps(t, acc[i]);
    for (float x : t) {
      s += x;
    }
  }
  return s;
}

// acc += a[2l] * b[2l] + a[2l+1] * b[2l+1] in each of the 16 fp32 lanes: 64 FLOPs an instruction.
// The products are small so that the sums stay normal numbers (the instruction flushes
// denormals, which would not slow it, but the result must stay meaningful to the compiler).
__attribute__((target("avx512f,avx512bf16"))) float bf16_loop(int64_t iters) {
  __m512 acc[kAcc];
  for (int i = 0; i < kAcc; i++) {
    acc[i] = _mm512_set1_ps(float(i) * 1e-3f);
  }
  const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(2e-3f));
  const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-4f), _mm512_set1_ps(3e-4f));
  for (int64_t it = 0; it < iters; it++) {
    for (int i = 0; i < kAcc; i++) {
      acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
    }
  }
  // A store and a scalar sum: GCC 12's _mm512_reduce_add_ps warns outside -mavx512f builds.
  alignas(64) float t[16];
  float s = 0;
  for (int i = 0; i < kAcc; i++) {
    _mm512_store_ps(t, acc[i]);
    for (float x : t) {
      s += x;
    }
  }
  return s;
}

bool has_avx512f() {
  return __builtin_cpu_supports("avx512f");
}

bool has_avx512_bf16() {
  return has_avx512f() && __builtin_cpu_supports("avx512bf16");
}

// The best GFLOP/s of `loop` on `threads` threads over repeated calls for `seconds`;
// `flops_per_call` is one thread's work in one call.
double peak_measure(float (*loop)(int64_t), double flops_per_call, int threads, double seconds) {
  double best = 0;
  volatile float sink = 0;
  const double t_end = time_now_s() + seconds;
  while (time_now_s() < t_end || best == 0) {
    const double t0 = time_now_s();
    float total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    { total += loop(kIters); }
    const double dt = time_now_s() - t0;
    sink = sink + total;
    best = std::max(best, flops_per_call * threads / dt / 1e9);
  }
  return best;
}

}  // namespace

double bench_fma_peak_gflops(int threads, double seconds) {
  // One FMA: 2 FLOPs a lane.
  if (has_avx512f()) {
    return peak_measure(fma_loop_avx512, double(kIters) * kAcc * 16 * 2, threads, seconds);
  }
  return peak_measure(fma_loop_avx2, double(kIters) * kAcc * 8 * 2, threads, seconds);
}

std::optional<double> bench_bf16_peak_gflops(int threads, double seconds) {
  if (!has_avx512_bf16()) {
    return std::nullopt;
  }
  // One VDPBF16PS: 2 multiplies and 2 adds in each of 16 lanes.
  return peak_measure(bf16_loop, double(kIters) * kAcc * 16 * 4, threads, seconds);
}

PeakIsa bench_peak_isa() {
  PeakIsa isa;
  isa.fp32 = has_avx512f() ? "avx512f" : "avx2";
  isa.bf16 = has_avx512_bf16() ? "avx512_bf16" : "";
  isa.amx_bf16 = __builtin_cpu_supports("amx-bf16");
  return isa;
}

}  // namespace moelab
