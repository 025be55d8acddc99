#pragma once
// Vectorisable math for the hot loops. std::exp is a library call that blocks vectorisation;
// fexp<float> is pure arithmetic (range reduction + degree-6 polynomial, within 2 ulp of expf on
// [-87, 88]) that GCC turns into AVX-512/AVX2 code. fexp<double> stays std::exp, so the double
// kernels keep full precision for the finite-difference tests.
#include <bit>
#include <cmath>
#include <cstdint>

namespace moelab::kernels {

inline float fexp_float(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);  // also maps -inf to ~1e-38, +inf to max
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;  // ln 2 split in a high part exact in float and a low part
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = (int32_t(n) + 127) << 23;
  return p * std::bit_cast<float>(e);
}

template <typename T>
inline T fexp(T x) {
  if constexpr (std::is_same_v<T, float>)
    return fexp_float(x);
  else
    return std::exp(x);
}

}  // namespace moelab::kernels
