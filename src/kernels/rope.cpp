#include <algorithm>
#include <cmath>
#include <numbers>

#include "kernels/kernels.hpp"
#include "kernels/parallel.hpp"

namespace moelab::kernels {

template <typename T>
void rope<T>::tables(T* cos, T* sin, int64_t seq, int64_t head_dim, const RopeParams& p) {
  // methods.md §3.4; computed in double whatever T is, so float and double models share the angles.
  const int64_t half = head_dim / 2;
  const double s = p.yarn_factor;
  const bool yarn = s > 1.0;
  const double lnb = std::log(p.theta), two_pi = 2.0 * std::numbers::pi;
  const double low =
      double(half) * std::log(double(p.original_context) / (p.beta_fast * two_pi)) / lnb;
  const double high =
      double(half) * std::log(double(p.original_context) / (p.beta_slow * two_pi)) / lnb;
  const double concentration = yarn ? 0.1 * std::log(s) + 1.0 : 1.0;
  for (int64_t i = 0; i < half; i++) {
    const double freq = std::pow(p.theta, double(2 * i) / double(head_dim));
    double inv = 1.0 / freq;
    if (yarn) {
      const double ramp = (double(i) - low) / (high - low);
      const double mask = 1.0 - std::clamp(ramp, 0.0, 1.0);
      inv = (1.0 / (s * freq)) * (1.0 - mask) + (1.0 / freq) * mask;
    }
    for (int64_t t = 0; t < seq; t++) {
      const double a = double(t) * inv;
      cos[t * half + i] = T(std::cos(a) * concentration);
      sin[t * half + i] = T(std::sin(a) * concentration);
    }
  }
}

namespace {

// Rotates each (i, i + half) pair by +angle (forward) or -angle (backward: the transpose).
template <typename T, int kSign>
void rope_rotate(T* x, int64_t N, int64_t seq, int64_t n_heads, int64_t head_dim, int64_t stride,
                 const T* cos, const T* sin) {
  const int64_t half = head_dim / 2;
#pragma omp parallel for schedule(static) if (parallel_worth(N * n_heads * head_dim))
  for (int64_t n = 0; n < N; n++) {
    const T* c = cos + (n % seq) * half;
    const T* s = sin + (n % seq) * half;
    for (int64_t h = 0; h < n_heads; h++) {
      T* p = x + n * stride + h * head_dim;
      for (int64_t i = 0; i < half; i++) {
        const T a = p[i], b = p[i + half], si = T(kSign) * s[i];
        p[i] = a * c[i] - b * si;
        p[i + half] = b * c[i] + a * si;
      }
    }
  }
}

}  // namespace

template <typename T>
void rope<T>::forward(T* x, int64_t N, int64_t seq, int64_t n_heads, int64_t head_dim,
                      int64_t stride, const T* cos, const T* sin) {
  rope_rotate<T, +1>(x, N, seq, n_heads, head_dim, stride, cos, sin);
}

template <typename T>
void rope<T>::backward(T* dx, int64_t N, int64_t seq, int64_t n_heads, int64_t head_dim,
                       int64_t stride, const T* cos, const T* sin) {
  rope_rotate<T, -1>(dx, N, seq, n_heads, head_dim, stride, cos, sin);
}

template struct rope<float>;
template struct rope<double>;

}  // namespace moelab::kernels
