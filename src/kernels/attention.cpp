#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/parallel.hpp"
#include "kernels/kernels.hpp"

namespace moelab::kernels {

namespace {

constexpr int64_t kTileQ = 32;  // query rows per task
constexpr int64_t kTileK = 64;  // keys per block: a K and a V block stay in L1 across the rows

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
  for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

// Keys that query i may see: [lo, i]; the sliding window keeps the `window` most recent.
inline int64_t key_lo(int64_t i, int64_t window) {
  return window > 0 ? std::max<int64_t>(0, i - window + 1) : 0;
}

}  // namespace

template <typename T>
void attention<T>::forward(T* out, T* lse, const T* qkv, const T* sinks, const AttnShape& s) {
  const int64_t C = (s.H + 2 * s.KV) * s.hd, hd = s.hd, group = s.H / s.KV;
  const int64_t tiles = (s.T + kTileQ - 1) / kTileQ;
  const T scale = T(s.scale);
#pragma omp parallel if (parallel_worth(s.B * s.T * s.T * s.H * s.hd))
  {
    std::vector<T> acc(kTileQ * hd), m(kTileQ), l(kTileQ), sc(kTileK);
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < s.B * s.H * tiles; task++) {
      const int64_t b = task / (s.H * tiles), h = (task / tiles) % s.H, qt = task % tiles;
      const int64_t g = h / group;
      const int64_t i0 = qt * kTileQ, i1 = std::min(s.T, i0 + kTileQ);
      const T* base = qkv + b * s.T * C;
      const T init = sinks ? sinks[h] : -std::numeric_limits<T>::infinity();
      std::fill(acc.begin(), acc.end(), T(0));
      std::fill(m.begin(), m.end(), init);
      std::fill(l.begin(), l.end(), T(0));
      for (int64_t j0 = key_lo(i0, s.window); j0 < i1; j0 += kTileK) {
        const int64_t j1 = std::min(i1, j0 + kTileK);
        for (int64_t i = i0; i < i1; i++) {
          const int64_t r = i - i0;
          const int64_t lo = std::max(j0, key_lo(i, s.window)), hi = std::min(j1, i + 1);
          if (lo >= hi) continue;
          const T* q = base + i * C + h * hd;
          T mx = -std::numeric_limits<T>::infinity();
          for (int64_t j = lo; j < hi; j++) {
            sc[j - lo] = scale * dot(q, base + j * C + (s.H + g) * hd, hd);
            mx = std::max(mx, sc[j - lo]);
          }
          const T mnew = std::max(m[r], mx);
          const T corr = std::exp(m[r] - mnew);
          T* a = acc.data() + r * hd;
          T sum = l[r] * corr;
          for (int64_t c = 0; c < hd; c++) a[c] *= corr;
          for (int64_t j = lo; j < hi; j++) {
            const T p = std::exp(sc[j - lo] - mnew);
            sum += p;
            const T* v = base + j * C + (s.H + s.KV + g) * hd;
            for (int64_t c = 0; c < hd; c++) a[c] += p * v[c];
          }
          l[r] = sum;
          m[r] = mnew;
        }
      }
      for (int64_t i = i0; i < i1; i++) {
        const int64_t r = i - i0;
        // The sink joins the normaliser only; m started at the sink logit, so m >= sink.
        const T norm = l[r] + (sinks ? std::exp(sinks[h] - m[r]) : T(0));
        T* o = out + (b * s.T + i) * s.H * hd + h * hd;
        for (int64_t c = 0; c < hd; c++) o[c] = acc[r * hd + c] / norm;
        lse[(b * s.T + i) * s.H + h] = m[r] + std::log(norm);
      }
    }
  }
}

template <typename T>
void attention<T>::backward(T* dqkv, T* dsinks, const T* dout, const T* qkv, const T* sinks,
                            const T* out, const T* lse, const AttnShape& s) {
  const int64_t C = (s.H + 2 * s.KV) * s.hd, hd = s.hd, group = s.H / s.KV;
  const int64_t OC = s.H * hd;
  const T scale = T(s.scale);
  std::vector<T> dsink_part(sinks && dsinks ? s.B * s.H : 0, T(0));
  // One task per (batch, kv head): it owns dK and dV of that head, and dQ of its query heads,
  // so no two threads write the same gradient row.
#pragma omp parallel if (parallel_worth(s.B * s.T * s.T * s.H * s.hd))
  {
    std::vector<T> dq(kTileQ * hd), D(kTileQ);
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < s.B * s.KV; task++) {
      const int64_t b = task / s.KV, g = task % s.KV;
      const T* base = qkv + b * s.T * C;
      T* dbase = dqkv + b * s.T * C;
      for (int64_t t = 0; t < s.T; t++) {
        std::fill_n(dbase + t * C + (s.H + g) * hd, hd, T(0));
        std::fill_n(dbase + t * C + (s.H + s.KV + g) * hd, hd, T(0));
      }
      for (int64_t h = g * group; h < (g + 1) * group; h++) {
        T dsink = 0;
        for (int64_t i0 = 0; i0 < s.T; i0 += kTileQ) {
          const int64_t i1 = std::min(s.T, i0 + kTileQ);
          for (int64_t i = i0; i < i1; i++) {
            const int64_t n = b * s.T + i;
            D[i - i0] = dot(dout + n * OC + h * hd, out + n * OC + h * hd, hd);
            if (!dsink_part.empty()) dsink -= std::exp(sinks[h] - lse[n * s.H + h]) * D[i - i0];
          }
          std::fill(dq.begin(), dq.end(), T(0));
          for (int64_t j0 = key_lo(i0, s.window); j0 < i1; j0 += kTileK) {
            const int64_t j1 = std::min(i1, j0 + kTileK);
            for (int64_t i = i0; i < i1; i++) {
              const int64_t r = i - i0, n = b * s.T + i;
              const int64_t lo = std::max(j0, key_lo(i, s.window)), hi = std::min(j1, i + 1);
              const T* q = base + i * C + h * hd;
              const T* dO = dout + n * OC + h * hd;
              const T L = lse[n * s.H + h];
              T* dqr = dq.data() + r * hd;
              for (int64_t j = lo; j < hi; j++) {
                const T* k = base + j * C + (s.H + g) * hd;
                const T* v = base + j * C + (s.H + s.KV + g) * hd;
                T* dk = dbase + j * C + (s.H + g) * hd;
                T* dv = dbase + j * C + (s.H + s.KV + g) * hd;
                const T p = std::exp(scale * dot(q, k, hd) - L);
                const T ds = scale * p * (dot(dO, v, hd) - D[r]);
                for (int64_t c = 0; c < hd; c++) {
                  dv[c] += p * dO[c];
                  dqr[c] += ds * k[c];
                  dk[c] += ds * q[c];
                }
              }
            }
          }
          for (int64_t i = i0; i < i1; i++)
            std::copy_n(dq.data() + (i - i0) * hd, hd, dbase + i * C + h * hd);
        }
        if (!dsink_part.empty()) dsink_part[b * s.H + h] = dsink;
      }
    }
  }
  for (int64_t b = 0; b < int64_t(dsink_part.size()) / s.H; b++)
    for (int64_t h = 0; h < s.H; h++) dsinks[h] += dsink_part[b * s.H + h];
}

template struct attention<float>;
template struct attention<double>;

}  // namespace moelab::kernels
