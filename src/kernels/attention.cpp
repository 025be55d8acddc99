#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/gemm.hpp"
#include "kernels/kernels.hpp"
#include "kernels/parallel.hpp"
#include "kernels/vmath.hpp"

namespace moelab::kernels {

// Flash-style attention on tiles: a task owns a block of query rows of one head and walks the
// keys in blocks; scores, P.V and every backward product are small GEMMs on strided views of
// the qkv rows (BLAS runs single-threaded inside the parallel region), and the softmax is done
// online per row. Memory per thread is kTileQ x kTileK scores, never T x T.

namespace {

constexpr int64_t kTileQ = 32;   // query rows per task
constexpr int64_t kTileK = 256;  // keys per block

// Keys that query i may see: [key_lo, i]; the sliding window keeps the `window` most recent.
inline int64_t key_lo(int64_t i, int64_t window) {
  return window > 0 ? std::max<int64_t>(0, i - window + 1) : 0;
}

template <typename T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

}  // namespace

template <typename T>
void attention<T>::forward(T* out, T* lse, const T* qkv, const T* sinks, const AttnShape& s) {
  const int64_t C = (s.H + 2 * s.KV) * s.hd, hd = s.hd, group = s.H / s.KV, OC = s.H * hd;
  const int64_t tiles = (s.T + kTileQ - 1) / kTileQ;
  const T scale = T(s.scale);
#pragma omp parallel if (parallel_worth(s.B * s.T * s.T * s.H * s.hd))
  {
    std::vector<T> S(kTileQ * kTileK), m(kTileQ), l(kTileQ);
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < s.B * s.H * tiles; task++) {
      const int64_t b = task / (s.H * tiles), h = (task / tiles) % s.H, qt = task % tiles;
      const int64_t g = h / group;
      const int64_t i0 = qt * kTileQ, i1 = std::min(s.T, i0 + kTileQ), nq = i1 - i0;
      const T* Q = qkv + (b * s.T + i0) * C + h * hd;
      T* O = out + (b * s.T + i0) * OC + h * hd;
      for (int64_t r = 0; r < nq; r++) std::fill_n(O + r * OC, hd, T(0));
      // m starts at the sink logit: the sink joins the normaliser as a column with no value.
      std::fill(m.begin(), m.end(), sinks ? sinks[h] : neg_inf<T>());
      std::fill(l.begin(), l.end(), T(0));
      for (int64_t j0 = key_lo(i0, s.window); j0 < i1; j0 += kTileK) {
        const int64_t j1 = std::min(i1, j0 + kTileK), nk = j1 - j0;
        const T* K = qkv + (b * s.T + j0) * C + (s.H + g) * hd;
        const T* V = qkv + (b * s.T + j0) * C + (s.H + s.KV + g) * hd;
        gemm<T>(Trans::N, Trans::T, nq, nk, hd, scale, Q, C, K, C, T(0), S.data(), kTileK);
        for (int64_t r = 0; r < nq; r++) {
          const int64_t i = i0 + r;
          const int64_t lo = std::max(j0, key_lo(i, s.window)) - j0, hi = std::min(j1, i + 1) - j0;
          T* p = S.data() + r * kTileK;
          T mx = neg_inf<T>();
#pragma omp simd reduction(max : mx)
          for (int64_t j = lo; j < hi; j++) mx = std::max(mx, p[j]);
          const T mnew = std::max(m[r], mx);
          const T corr = m[r] == neg_inf<T>() ? T(0) : fexp(m[r] - mnew);
          T sum = 0;
          for (int64_t j = 0; j < lo; j++) p[j] = 0;
#pragma omp simd reduction(+ : sum)
          for (int64_t j = lo; j < hi; j++) sum += (p[j] = fexp(p[j] - mnew));
          for (int64_t j = std::max(hi, lo); j < nk; j++) p[j] = 0;
          if (hi > lo) {
            l[r] = l[r] * corr + sum;
            m[r] = mnew;
            if (corr != T(1))
              for (int64_t c = 0; c < hd; c++) O[r * OC + c] *= corr;
          }
        }
        gemm<T>(Trans::N, Trans::N, nq, hd, nk, T(1), S.data(), kTileK, V, C, T(1), O, OC);
      }
      for (int64_t r = 0; r < nq; r++) {
        const T norm = l[r] + (sinks ? fexp(sinks[h] - m[r]) : T(0));
        const T inv = T(1) / norm;
        for (int64_t c = 0; c < hd; c++) O[r * OC + c] *= inv;
        lse[(b * s.T + i0 + r) * s.H + h] = m[r] + std::log(norm);
      }
    }
  }
}

template <typename T>
void attention<T>::backward(T* dqkv, T* dsinks, const T* dout, const T* qkv, const T* sinks,
                            const T* out, const T* lse, const AttnShape& s) {
  const int64_t C = (s.H + 2 * s.KV) * s.hd, hd = s.hd, group = s.H / s.KV, OC = s.H * hd;
  std::vector<T> dsink_part(sinks && dsinks ? s.B * s.H : 0, T(0));
  // One task per (batch, kv head): it owns dK and dV of that head and dQ of its query heads, so
  // no two threads write the same gradient row, and the order of accumulation is fixed.
#pragma omp parallel if (parallel_worth(s.B * s.T * s.T * s.H * s.hd))
  {
    std::vector<T> P(kTileQ * kTileK), dP(kTileQ * kTileK), D(kTileQ);
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
          const int64_t i1 = std::min(s.T, i0 + kTileQ), nq = i1 - i0;
          const T* Q = base + i0 * C + h * hd;
          const T* dO = dout + (b * s.T + i0) * OC + h * hd;
          T* dQ = dbase + i0 * C + h * hd;
          for (int64_t r = 0; r < nq; r++) {
            const T* o = out + (b * s.T + i0 + r) * OC + h * hd;
            T d = 0;
#pragma omp simd reduction(+ : d)
            for (int64_t c = 0; c < hd; c++) d += dO[r * OC + c] * o[c];
            D[r] = d;
            std::fill_n(dQ + r * C, hd, T(0));
            if (!dsink_part.empty())
              dsink -= fexp(sinks[h] - lse[(b * s.T + i0 + r) * s.H + h]) * d;
          }
          for (int64_t j0 = key_lo(i0, s.window); j0 < i1; j0 += kTileK) {
            const int64_t j1 = std::min(i1, j0 + kTileK), nk = j1 - j0;
            const T* K = base + j0 * C + (s.H + g) * hd;
            const T* V = base + j0 * C + (s.H + s.KV + g) * hd;
            T* dK = dbase + j0 * C + (s.H + g) * hd;
            T* dV = dbase + j0 * C + (s.H + s.KV + g) * hd;
            // P = exp(scale Q K^T - lse), masked; dP = dO V^T
            gemm<T>(Trans::N, Trans::T, nq, nk, hd, T(s.scale), Q, C, K, C, T(0), P.data(), kTileK);
            gemm<T>(Trans::N, Trans::T, nq, nk, hd, T(1), dO, OC, V, C, T(0), dP.data(), kTileK);
            for (int64_t r = 0; r < nq; r++) {
              const int64_t i = i0 + r;
              const int64_t lo = std::max(j0, key_lo(i, s.window)) - j0;
              const int64_t hi = std::min(j1, i + 1) - j0;
              const T L = lse[(b * s.T + i) * s.H + h];
              const T Dr = D[r], scale = T(s.scale);
              T* p = P.data() + r * kTileK;
              T* dp = dP.data() + r * kTileK;
              // the exponentials of the visible keys only: a sliding window masks about half
              // of a tile's columns
              const int64_t first = std::min(lo, nk);
              std::fill_n(p, first, T(0));
              std::fill_n(dp, first, T(0));
#pragma omp simd
              for (int64_t j = lo; j < hi; j++) {
                const T pj = fexp(p[j] - L);
                p[j] = pj;
                dp[j] = pj * (dp[j] - Dr) * scale;  // dS, already scaled for dQ and dK
              }
              const int64_t end = std::max(hi, first);
              std::fill(p + end, p + nk, T(0));
              std::fill(dp + end, dp + nk, T(0));
            }
            gemm<T>(Trans::T, Trans::N, nk, hd, nq, T(1), P.data(), kTileK, dO, OC, T(1), dV, C);
            gemm<T>(Trans::N, Trans::N, nq, hd, nk, T(1), dP.data(), kTileK, K, C, T(1), dQ, C);
            gemm<T>(Trans::T, Trans::N, nk, hd, nq, T(1), dP.data(), kTileK, Q, C, T(1), dK, C);
          }
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
