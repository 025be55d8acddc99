#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/kernels.hpp"
#include "kernels/vmath.hpp"

namespace moelab::kernels {

// One new position t per sequence against the cached keys and values: the query heads of a KV
// group share its keys, so each (sequence, group) scores all its heads in one sweep over the
// cache, with vectorised dot products and exp.
template <typename T>
void attention_decode<T>::forward(T* out, const T* qkv, const T* K, const T* V, int64_t L,
                                  const T* sinks, const int64_t* pos, const int64_t* slot,
                                  const AttnShape& s) {
  const int64_t B = s.B, H = s.H, KV = s.KV, hd = s.hd;
  const int64_t C = (H + 2 * KV) * hd, G = H / KV;
  const T scale = T(s.scale);
  int64_t tmax = 0;
  for (int64_t b = 0; b < B; b++) tmax = std::max(tmax, pos[b]);
#pragma omp parallel if (B * H * (tmax + 1) * hd >= (1 << 15))
  {
    std::vector<T> sc;  // [G, n] scores, then probabilities
#pragma omp for schedule(dynamic, 1)
    for (int64_t bg = 0; bg < B * KV; bg++) {
      const int64_t b = bg / KV, g = bg % KV, t = pos[b], sb = slot ? slot[b] : b;
      const int64_t lo = s.window > 0 ? std::max<int64_t>(0, t - s.window + 1) : 0;
      const int64_t n = t + 1 - lo;
      const T* q0 = qkv + b * C + g * G * hd;  // the G query heads of group g
      sc.assign(size_t(G * n), T(0));
      for (int64_t c = 0; c < hd; c++) {
        const T* kc = K + ((sb * KV + g) * hd + c) * L + lo;
        for (int64_t h = 0; h < G; h++) {
          const T qc = q0[h * hd + c] * scale;
          T* sh = sc.data() + h * n;
#pragma omp simd
          for (int64_t j = 0; j < n; j++) sh[j] += qc * kc[j];
        }
      }
      for (int64_t h = 0; h < G; h++) {
        T* sh = sc.data() + h * n;
        const T sink = sinks ? sinks[g * G + h] : -std::numeric_limits<T>::infinity();
        T mx = sink;
        for (int64_t j = 0; j < n; j++) mx = std::max(mx, sh[j]);
        T sum = sinks ? std::exp(sink - mx) : T(0);
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < n; j++) sum += (sh[j] = fexp(sh[j] - mx));
        const T inv = T(1) / sum;
        T* o = out + b * H * hd + (g * G + h) * hd;
        std::fill_n(o, hd, T(0));
        for (int64_t j = 0; j < n; j++) {
          const T p = sh[j] * inv;
          const T* vj = V + ((sb * L + lo + j) * KV + g) * hd;
#pragma omp simd
          for (int64_t c = 0; c < hd; c++) o[c] += p * vj[c];
        }
      }
    }
  }
}

template struct attention_decode<float>;
template struct attention_decode<double>;

}  // namespace moelab::kernels
