#pragma once
// Counter-based randomness: every draw is a pure function of (seed, stream, index), so results
// do not depend on thread count or the order in which tensors are initialised.
#include <cmath>
#include <cstdint>
#include <numbers>

namespace moelab {

constexpr uint64_t rng_mix(uint64_t x) {  // splitmix64 finaliser
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

constexpr uint64_t rng_u64(uint64_t seed, uint64_t stream, uint64_t i) {
  return rng_mix(rng_mix(seed ^ rng_mix(stream)) + i);
}

// Uniform in (0, 1), never 0, so that log() is safe.
constexpr double rng_uniform(uint64_t seed, uint64_t stream, uint64_t i) {
  return (double(rng_u64(seed, stream, i) >> 11) + 0.5) * 0x1.0p-53;
}

// Standard normal by Box-Muller on two independent uniforms.
inline double rng_normal(uint64_t seed, uint64_t stream, uint64_t i) {
  double u1 = rng_uniform(seed, stream, 2 * i), u2 = rng_uniform(seed, stream, 2 * i + 1);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

}  // namespace moelab
