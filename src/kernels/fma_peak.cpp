#include "kernels/fma_peak.hpp"

#include <immintrin.h>

#include <algorithm>

#include "core/sysinfo.hpp"

namespace moelab {

// ----------------------------------------------------------------------------
// FMA peak: independent accumulators, enough to cover the FMA latency on both pipes.

namespace {

#if defined(__AVX512F__)
using vfloat = __m512;
constexpr int kLanes = 16;
inline vfloat vset(float x) {
  return _mm512_set1_ps(x);
}
inline vfloat vfma(vfloat a, vfloat b, vfloat c) {
  return _mm512_fmadd_ps(a, b, c);
}
inline float vsum(vfloat a) {
  alignas(64) float t[16];
  _mm512_store_ps(t, a);
  float s = 0;
  for (float x : t) s += x;
  return s;
}
#elif defined(__AVX2__) && defined(__FMA__)
using vfloat = __m256;
constexpr int kLanes = 8;
inline vfloat vset(float x) {
  return _mm256_set1_ps(x);
}
inline vfloat vfma(vfloat a, vfloat b, vfloat c) {
  return _mm256_fmadd_ps(a, b, c);
}
inline float vsum(vfloat a) {
  alignas(32) float t[8];
  _mm256_store_ps(t, a);
  return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
#else
#error "moelab needs AVX2+FMA or AVX-512 (configure with -DMOELAB_NATIVE=ON on such a CPU)"
#endif

constexpr int kAcc = 12;

float fma_loop(int64_t iters) {
  vfloat acc[kAcc];
  for (int i = 0; i < kAcc; i++) acc[i] = vset(float(i) * 1e-3f);
  const vfloat a = vset(0.999999f), b = vset(1e-7f);
  for (int64_t it = 0; it < iters; it++)
    for (int i = 0; i < kAcc; i++) acc[i] = vfma(acc[i], a, b);
  float s = 0;
  for (int i = 0; i < kAcc; i++) s += vsum(acc[i]);
  return s;
}

}  // namespace

double bench_fma_peak_gflops(int threads, double seconds) {
  const int64_t iters = 1 << 22;
  const double flops_per_call = double(iters) * kAcc * kLanes * 2;
  double best = 0;
  volatile float sink = 0;
  const double t_end = time_now_s() + seconds;
  while (time_now_s() < t_end || best == 0) {
    const double t0 = time_now_s();
#pragma omp parallel num_threads(threads)
    { sink = sink + fma_loop(iters); }
    const double dt = time_now_s() - t0;
    best = std::max(best, flops_per_call * threads / dt / 1e9);
  }
  return best;
}

}  // namespace moelab
