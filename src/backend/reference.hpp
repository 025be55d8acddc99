#pragma once
// Scalar references: the plainest loops that compute each op, written from the formulas of
// docs/methods.md §3 rather than from the kernels: no OpenMP, no BLAS, sums in double. The
// reference device (backend/reference.cpp, MOELAB_DEVICE=reference) runs them as its op table;
// tests/unit/test_ops.cpp checks the kernels against them op by op, tests/unit/test_backend_ops.cpp
// the two devices against each other. Same interface as src/kernels/kernels.hpp (the router's bias
// comes last, the linear maps take no precision: they are always exact).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/rng.hpp"
#include "kernels/kernels.hpp"

namespace moelab::ref {

using kernels::AttnShape;
using kernels::WLayout;

template <typename T>
struct embedding {
  static void forward(T* out, const int32_t* tok, const T* W, int64_t N, int64_t d) {
    for (int64_t n = 0; n < N; n++)
      for (int64_t i = 0; i < d; i++) out[n * d + i] = W[tok[n] * d + i];
  }
  static void backward(T* dW, const T* dout, const int32_t* tok, int64_t N, int64_t d) {
    for (int64_t n = 0; n < N; n++)
      for (int64_t i = 0; i < d; i++) dW[tok[n] * d + i] += dout[n * d + i];
  }
};

template <typename T>
struct rmsnorm {
  static void forward(T* out, T* rstd, const T* x, const T* g, int64_t N, int64_t d, double eps) {
    for (int64_t n = 0; n < N; n++) {
      double ms = 0;
      for (int64_t i = 0; i < d; i++) ms += double(x[n * d + i]) * x[n * d + i] / double(d);
      rstd[n] = T(1.0 / std::sqrt(ms + eps));
      for (int64_t i = 0; i < d; i++) out[n * d + i] = x[n * d + i] * rstd[n] * g[i];
    }
  }
  static void backward(T* dx, T* dg, const T* dout, const T* x, const T* g, const T* rstd,
                       int64_t N, int64_t d) {
    // y_i = x_i r g_i, r = (mean x^2 + eps)^-1/2, dr/dx_j = -r^3 x_j / d
    for (int64_t n = 0; n < N; n++) {
      const double r = rstd[n];
      double s = 0;
      for (int64_t i = 0; i < d; i++) s += double(dout[n * d + i]) * g[i] * x[n * d + i];
      for (int64_t j = 0; j < d; j++)
        dx[n * d + j] += T(dout[n * d + j] * g[j] * r - s * r * r * r * x[n * d + j] / double(d));
      if (dg)
        for (int64_t i = 0; i < d; i++) dg[i] += T(dout[n * d + i] * x[n * d + i] * r);
    }
  }
};

template <typename T>
struct linear {
  static T w_at(const T* W, int64_t o, int64_t i, int64_t I, int64_t O, WLayout l) {
    return l == WLayout::OutIn ? W[o * I + i] : W[i * O + o];
  }
  static void forward(T* out, const T* x, const T* W, const T* b, int64_t N, int64_t I, int64_t O,
                      WLayout l, Precision = Precision::F32) {
    for (int64_t n = 0; n < N; n++)
      for (int64_t o = 0; o < O; o++) {
        double s = b ? double(b[o]) : 0.0;
        for (int64_t i = 0; i < I; i++) s += double(x[n * I + i]) * w_at(W, o, i, I, O, l);
        out[n * O + o] = T(s);
      }
  }
  static void backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, int64_t N,
                       int64_t I, int64_t O, WLayout l, bool dx_accumulate = false,
                       Precision = Precision::F32) {
    for (int64_t n = 0; n < N; n++) {
      for (int64_t i = 0; i < I && dx; i++) {
        double s = 0;
        for (int64_t o = 0; o < O; o++) s += double(dout[n * O + o]) * w_at(W, o, i, I, O, l);
        dx[n * I + i] = T(dx_accumulate ? dx[n * I + i] + s : s);
      }
      for (int64_t o = 0; o < O; o++) {
        if (db) db[o] += dout[n * O + o];
        for (int64_t i = 0; i < I && dW; i++) {
          T& w = l == WLayout::OutIn ? dW[o * I + i] : dW[i * O + o];
          w += dout[n * O + o] * x[n * I + i];
        }
      }
    }
  }
};

// Each expert's rows through linear, one expert after another.
template <typename T>
struct linear_grouped {
  static void forward(T* out, const T* x, const T* W, const T* b, const int64_t* offsets, int64_t E,
                      int64_t I, int64_t O, WLayout l, Precision = Precision::F32) {
    for (int64_t e = 0; e < E; e++) {
      const int64_t r0 = offsets[e], n = offsets[e + 1] - offsets[e];
      linear<T>::forward(out + r0 * O, x + r0 * I, W + e * I * O, b ? b + e * O : nullptr, n, I, O,
                         l);
    }
  }
  static void backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W,
                       const int64_t* offsets, int64_t E, int64_t I, int64_t O, WLayout l,
                       bool dx_accumulate = false, Precision = Precision::F32) {
    for (int64_t e = 0; e < E; e++) {
      const int64_t r0 = offsets[e], n = offsets[e + 1] - offsets[e];
      linear<T>::backward(dx ? dx + r0 * I : nullptr, dW ? dW + e * I * O : nullptr,
                          db ? db + e * O : nullptr, dout + r0 * O, x + r0 * I, W + e * I * O, n, I,
                          O, l, dx_accumulate);
    }
  }
};

template <typename T>
struct rope {
  // forward/backward as explicit 2x2 rotations with angle t * inv_freq (tables from kernels)
  static void forward(T* x, int64_t N, int64_t seq, int64_t nh, int64_t hd, int64_t stride,
                      const T* cos, const T* sin) {
    apply(x, N, seq, nh, hd, stride, cos, sin, +1);
  }
  static void backward(T* x, int64_t N, int64_t seq, int64_t nh, int64_t hd, int64_t stride,
                       const T* cos, const T* sin) {
    apply(x, N, seq, nh, hd, stride, cos, sin, -1);
  }
  static void apply(T* x, int64_t N, int64_t seq, int64_t nh, int64_t hd, int64_t stride,
                    const T* cos, const T* sin, int sign) {
    const int64_t half = hd / 2;
    for (int64_t n = 0; n < N; n++)
      for (int64_t h = 0; h < nh; h++)
        for (int64_t i = 0; i < half; i++) {
          T* p = x + n * stride + h * hd;
          const T c = cos[(n % seq) * half + i], s = T(sign) * sin[(n % seq) * half + i];
          const T a = p[i], b = p[i + half];
          p[i] = a * c - b * s;
          p[i + half] = a * s + b * c;
        }
  }
};

template <typename T>
struct attention {
  // Materialises the full score matrix; the sink is an extra logit column that is dropped
  // after the softmax (the reference implementation's formulation, methods.md §3.3).
  static void forward(T* out, T* lse, const T* qkv, const T* sinks, const AttnShape& s) {
    const int64_t C = (s.H + 2 * s.KV) * s.hd, g = s.H / s.KV;
    for (int64_t b = 0; b < s.B; b++)
      for (int64_t h = 0; h < s.H; h++)
        for (int64_t i = 0; i < s.T; i++) {
          std::vector<double> p = probs(qkv, sinks, s, b, h, i);
          double norm_log = 0;
          lse_of(qkv, sinks, s, b, h, i, norm_log);
          for (int64_t c = 0; c < s.hd; c++) {
            double o = 0;
            for (int64_t j = 0; j < s.T; j++)
              o += p[j] * qkv[(b * s.T + j) * C + (s.H + s.KV + h / g) * s.hd + c];
            out[(b * s.T + i) * s.H * s.hd + h * s.hd + c] = T(o);
          }
          lse[(b * s.T + i) * s.H + h] = T(norm_log);
        }
  }
  static bool allowed(const AttnShape& s, int64_t i, int64_t j) {
    return j <= i && (s.window == 0 || j > i - s.window);
  }
  static double score(const T* qkv, const AttnShape& s, int64_t b, int64_t h, int64_t i,
                      int64_t j) {
    const int64_t C = (s.H + 2 * s.KV) * s.hd, g = s.H / s.KV;
    double d = 0;
    for (int64_t c = 0; c < s.hd; c++)
      d += double(qkv[(b * s.T + i) * C + h * s.hd + c]) *
           qkv[(b * s.T + j) * C + (s.H + h / g) * s.hd + c];
    return d * s.scale;
  }
  static void lse_of(const T* qkv, const T* sinks, const AttnShape& s, int64_t b, int64_t h,
                     int64_t i, double& out) {
    std::vector<double> z;
    for (int64_t j = 0; j < s.T; j++)
      if (allowed(s, i, j)) z.push_back(score(qkv, s, b, h, i, j));
    if (sinks) z.push_back(sinks[h]);
    const double m = *std::max_element(z.begin(), z.end());
    double sum = 0;
    for (double v : z) sum += std::exp(v - m);
    out = m + std::log(sum);
  }
  static std::vector<double> probs(const T* qkv, const T* sinks, const AttnShape& s, int64_t b,
                                   int64_t h, int64_t i) {
    double L;
    lse_of(qkv, sinks, s, b, h, i, L);
    std::vector<double> p(size_t(s.T), 0.0);
    for (int64_t j = 0; j < s.T; j++)
      if (allowed(s, i, j)) p[j] = std::exp(score(qkv, s, b, h, i, j) - L);
    return p;
  }
  static void backward(T* dqkv, T* dsinks, const T* dout, const T* qkv, const T* sinks,
                       const T* out, const T* lse, const AttnShape& s) {
    const int64_t C = (s.H + 2 * s.KV) * s.hd, g = s.H / s.KV, OC = s.H * s.hd;
    std::fill_n(dqkv, s.B * s.T * C, T(0));
    for (int64_t b = 0; b < s.B; b++)
      for (int64_t h = 0; h < s.H; h++)
        for (int64_t i = 0; i < s.T; i++) {
          const std::vector<double> p = probs(qkv, sinks, s, b, h, i);
          const T* dO = dout + (b * s.T + i) * OC + h * s.hd;
          // dP_ij = dO . v_j ; dS = P (dP - sum_j P dP) ; the sink has dP = 0
          std::vector<double> dp(size_t(s.T), 0.0);
          double pdp = 0;
          for (int64_t j = 0; j < s.T; j++) {
            if (!allowed(s, i, j)) continue;
            for (int64_t c = 0; c < s.hd; c++)
              dp[j] += double(dO[c]) * qkv[(b * s.T + j) * C + (s.H + s.KV + h / g) * s.hd + c];
            pdp += p[j] * dp[j];
          }
          if (sinks && dsinks) {
            double L;
            lse_of(qkv, sinks, s, b, h, i, L);
            dsinks[h] += T(std::exp(double(sinks[h]) - L) * (0.0 - pdp));
          }
          for (int64_t j = 0; j < s.T; j++) {
            if (!allowed(s, i, j)) continue;
            const double ds = p[j] * (dp[j] - pdp) * s.scale;
            for (int64_t c = 0; c < s.hd; c++) {
              dqkv[(b * s.T + i) * C + h * s.hd + c] +=
                  T(ds * qkv[(b * s.T + j) * C + (s.H + h / g) * s.hd + c]);
              dqkv[(b * s.T + j) * C + (s.H + h / g) * s.hd + c] +=
                  T(ds * qkv[(b * s.T + i) * C + h * s.hd + c]);
              dqkv[(b * s.T + j) * C + (s.H + s.KV + h / g) * s.hd + c] += T(p[j] * dO[c]);
            }
          }
        }
  }
};

template <typename T>
struct swiglu {
  static void forward(T* out, const T* h, int64_t N, int64_t I, double limit, double alpha) {
    const double L = limit > 0 ? limit : 1e300;
    for (int64_t n = 0; n < N; n++)
      for (int64_t j = 0; j < I; j++) {
        const double g = std::min(double(h[n * 2 * I + 2 * j]), L);
        const double l = std::clamp(double(h[n * 2 * I + 2 * j + 1]), -L, L);
        out[n * I + j] = T(g * (1.0 / (1.0 + std::exp(-alpha * g))) * (l + 1.0));
      }
  }
  static void backward(T* dh, const T* dout, const T* h, int64_t N, int64_t I, double limit,
                       double alpha) {
    const double L = limit > 0 ? limit : 1e300;
    for (int64_t n = 0; n < N; n++)
      for (int64_t j = 0; j < I; j++) {
        const double gr = h[n * 2 * I + 2 * j], lr = h[n * 2 * I + 2 * j + 1];
        const double g = std::min(gr, L), l = std::clamp(lr, -L, L);
        const double sg = 1.0 / (1.0 + std::exp(-alpha * g));
        const double dy = dout[n * I + j];
        // d/dg [g sigmoid(a g)] = sigmoid + a g sigmoid (1 - sigmoid)
        dh[n * 2 * I + 2 * j] = T(gr <= L ? dy * (l + 1.0) * (sg + alpha * g * sg * (1 - sg)) : 0);
        dh[n * 2 * I + 2 * j + 1] = T(lr >= -L && lr <= L ? dy * g * sg : 0);
      }
  }
};

template <typename T>
struct router {
  // bias [E] or null: chosen by a stable sort of logits + bias, weighted by the raw logits
  static void forward(int32_t* idx, T* w, const T* logits, int64_t N, int64_t E, int64_t k,
                      const T* bias = nullptr) {
    for (int64_t n = 0; n < N; n++) {
      std::vector<int32_t> ids(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; e++) ids[e] = int32_t(e);
      auto key = [&](int32_t e) { return logits[n * E + e] + (bias ? bias[e] : T(0)); };
      std::stable_sort(ids.begin(), ids.end(),
                       [&](int32_t a, int32_t b) { return key(a) > key(b); });
      double sum = 0;
      for (int64_t j = 0; j < k; j++) sum += std::exp(double(logits[n * E + ids[j]]));
      for (int64_t j = 0; j < k; j++) {
        idx[n * k + j] = ids[j];
        w[n * k + j] = T(std::exp(double(logits[n * E + ids[j]])) / sum);
      }
    }
  }
  static void backward(T* dlogits, const T* dw, const T* w, const int32_t* idx, int64_t N,
                       int64_t E, int64_t k) {
    for (int64_t n = 0; n < N; n++) {
      for (int64_t e = 0; e < E; e++) dlogits[n * E + e] = 0;
      for (int64_t a = 0; a < k; a++)  // d w_a / d z_b = w_a (delta_ab - w_b)
        for (int64_t b = 0; b < k; b++)
          dlogits[n * E + idx[n * k + b]] +=
              dw[n * k + a] * w[n * k + a] * ((a == b ? 1 : 0) - w[n * k + b]);
    }
  }
  static kernels::RouterLosses loss_forward(const T* logits, const int32_t* idx, int64_t N,
                                            int64_t E, int64_t k, double ca, double cz) {
    std::vector<double> f(size_t(E), 0.0), P(size_t(E), 0.0);
    double z = 0;
    for (int64_t i = 0; i < N * k; i++) f[idx[i]] += 1.0 / double(N * k);
    for (int64_t n = 0; n < N; n++) {
      double sum = 0;
      for (int64_t e = 0; e < E; e++) sum += std::exp(double(logits[n * E + e]));
      for (int64_t e = 0; e < E; e++) P[e] += std::exp(double(logits[n * E + e])) / sum / double(N);
      z += std::log(sum) * std::log(sum) / double(N);
    }
    double aux = 0;
    for (int64_t e = 0; e < E; e++) aux += f[e] * P[e];
    return {ca * double(E) * aux, cz * z, double(E) * aux, z};
  }
  // dlogits += scale * d(aux + z)/dlogits, the routing fractions held fixed
  static void loss_backward(T* dlogits, const T* logits, const int32_t* idx, int64_t N, int64_t E,
                            int64_t k, double ca, double cz, double scale) {
    if (N == 0) return;
    std::vector<double> f(size_t(E), 0.0);
    for (int64_t i = 0; i < N * k; i++) f[idx[i]] += 1.0 / double(N * k);
    for (int64_t n = 0; n < N; n++) {
      double sum = 0;
      for (int64_t e = 0; e < E; e++) sum += std::exp(double(logits[n * E + e]));
      const double lse = std::log(sum);
      // aux = ca E sum_e f_e P_e, P_e = mean_n p_ne; z = cz mean_n lse_n^2
      for (int64_t j = 0; j < E; j++) {
        const double pj = std::exp(double(logits[n * E + j])) / sum;
        double g = cz * 2.0 * lse * pj / double(N);
        for (int64_t e = 0; e < E; e++) {
          const double pe = std::exp(double(logits[n * E + e])) / sum;
          g += ca * double(E) * f[e] * pe * ((e == j ? 1.0 : 0.0) - pj) / double(N);
        }
        dlogits[n * E + j] += T(scale * g);
      }
    }
  }
};

template <typename T>
struct cross_entropy {
  static double forward(T* lse, const T* logits, const int32_t* targets, int64_t N, int64_t V) {
    double total = 0;
    for (int64_t n = 0; n < N; n++) {
      const T* z = logits + n * V;
      const double m = *std::max_element(z, z + V);
      double sum = 0;
      for (int64_t v = 0; v < V; v++) sum += std::exp(double(z[v]) - m);
      lse[n] = T(m + std::log(sum));
      if (targets[n] >= 0) total += m + std::log(sum) - z[targets[n]];
    }
    return total;
  }
  static void backward(T* dlogits, const T* logits, const T* lse, const int32_t* targets, int64_t N,
                       int64_t V, double scale) {
    for (int64_t n = 0; n < N; n++)
      for (int64_t v = 0; v < V; v++) {
        const double p = std::exp(double(logits[n * V + v]) - double(lse[n]));
        const double hot = v == targets[n] ? 1.0 : 0.0;
        dlogits[n * V + v] = T(targets[n] < 0 ? 0.0 : scale * (p - hot));
      }
  }
};

// One new position t per sequence from a key/value cache: softmax over the allowed cached
// positions (and the sink) of q . k * scale, then the weighted sum of the values.
template <typename T>
struct attention_decode {
  static void forward(T* out, const T* qkv, const T* K, const T* V, int64_t L, const T* sinks,
                      const int64_t* pos, const int64_t* slot, const AttnShape& s) {
    const int64_t C = (s.H + 2 * s.KV) * s.hd, g = s.H / s.KV;
    for (int64_t b = 0; b < s.B; b++)
      for (int64_t h = 0; h < s.H; h++) {
        const int64_t t = pos[b], sb = slot ? slot[b] : b;
        const int64_t kv = h / g;
        std::vector<double> z;
        for (int64_t j = 0; j <= t; j++) {
          if (s.window > 0 && j <= t - s.window) continue;
          double d = 0;
          for (int64_t c = 0; c < s.hd; c++)
            d += double(qkv[b * C + h * s.hd + c]) * K[((sb * s.KV + kv) * s.hd + c) * L + j];
          z.push_back(d * s.scale);
        }
        const double m0 = *std::max_element(z.begin(), z.end());
        const double m = sinks ? std::max(m0, double(sinks[h])) : m0;
        double sum = sinks ? std::exp(double(sinks[h]) - m) : 0.0;
        for (double v : z) sum += std::exp(v - m);
        const int64_t lo = t + 1 - int64_t(z.size());
        for (int64_t c = 0; c < s.hd; c++) {
          double o = 0;
          for (size_t j = 0; j < z.size(); j++)
            o += std::exp(z[j] - m) / sum * V[((sb * L + lo + int64_t(j)) * s.KV + kv) * s.hd + c];
          out[b * s.H * s.hd + h * s.hd + c] = T(o);
        }
      }
  }
};

template <typename T>
struct add {
  static void forward(T* out, const T* a, const T* b, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
  }
};

template <typename T>
struct fusion {
  static void forward(T* out, const T* F, const T* M, const T* a, int64_t a_stride, int64_t N,
                      int64_t d) {
    for (int64_t n = 0; n < N; n++)
      for (int64_t j = 0; j < d; j++) {
        const double an = a[n * a_stride];
        out[n * d + j] = T((1 - an) * F[n * d + j] + an * M[n * d + j]);
      }
  }
  static void backward(T* dF, T* dM, T* da, const T* dout, const T* F, const T* M, const T* a,
                       int64_t a_stride, int64_t N, int64_t d) {
    for (int64_t n = 0; n < N; n++) {
      double s = 0;
      for (int64_t j = 0; j < d; j++) {
        const double an = a[n * a_stride], g = dout[n * d + j];
        dF[n * d + j] = T((1 - an) * g);
        dM[n * d + j] = T(an * g);
        s += g * (double(M[n * d + j]) - F[n * d + j]);
      }
      if (da) da[n] = T(s);
    }
  }
};

// ----------------------------------------------------------------------------
// MoE dispatch and combine, by the definition of the sorted rows

template <typename T>
struct moe_gather {
  static void forward(T* xe, const T* x, const kernels::MoeRouting& r, int64_t d) {
    for (int64_t a = 0; a < r.N * r.k; a++)
      for (int64_t c = 0; c < d; c++) xe[r.pos[a] * d + c] = x[(a / r.k) * d + c];
  }
  static void backward(T* dx, const T* dxe, const kernels::MoeRouting& r, int64_t d) {
    for (int64_t a = 0; a < r.N * r.k; a++)
      for (int64_t c = 0; c < d; c++) dx[(a / r.k) * d + c] += dxe[r.pos[a] * d + c];
  }
};

template <typename T>
struct moe_combine {
  static void forward(T* out, const T* y, const T* w, const kernels::MoeRouting& r, int64_t d) {
    for (int64_t n = 0; n < r.N; n++)
      for (int64_t c = 0; c < d; c++) {
        double s = 0;
        for (int64_t j = 0; j < r.k; j++)
          s += double(w[n * r.k + j]) * y[r.pos[n * r.k + j] * d + c];
        out[n * d + c] = T(s);
      }
  }
  static void backward(T* dy, T* dw, const T* dout, const T* y, const T* w,
                       const kernels::MoeRouting& r, int64_t d) {
    for (int64_t n = 0; n < r.N; n++)
      for (int64_t j = 0; j < r.k; j++) {
        const int64_t row = r.pos[n * r.k + j];
        double s = 0;
        for (int64_t c = 0; c < d; c++) {
          dy[row * d + c] = T(double(w[n * r.k + j]) * dout[n * d + c]);
          s += double(dout[n * d + c]) * y[row * d + c];
        }
        dw[n * r.k + j] = T(s);
      }
  }
};

// C [M,N] = op(A) op(B) + beta C, every product exact in double (the precision is ignored)
template <typename T>
void gemm(Precision, Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      double s = 0;
      for (int64_t p = 0; p < K; p++) {
        const double a = ta == Trans::N ? A[i * lda + p] : A[p * lda + i];
        const double b = tb == Trans::N ? B[p * ldb + j] : B[j * ldb + p];
        s += a * b;
      }
      C[i * ldc + j] = T(beta == T(0) ? s : s + double(beta) * C[i * ldc + j]);
    }
}

// ----------------------------------------------------------------------------
// the glue between the blocks

template <typename T>
struct logsumexp {
  static void forward(T* mx, double* sum, const T* z, int64_t N, int64_t V, bool) {
    for (int64_t n = 0; n < N; n++) {
      mx[n] = *std::max_element(z + n * V, z + (n + 1) * V);
      sum[n] = 0;
      for (int64_t v = 0; v < V; v++) sum[n] += std::exp(double(z[n * V + v]) - double(mx[n]));
    }
  }
};

template <typename T>
struct argmax {
  static void forward(int32_t* idx, const T* z, int64_t N, int64_t V, int64_t stride) {
    for (int64_t n = 0; n < N; n++) {
      int64_t best = -1;  // the first of the largest; NaN never wins
      for (int64_t v = 0; v < V; v++) {
        const T x = z[n * stride + v];
        if (!std::isnan(x) && (best < 0 || x > z[n * stride + best])) best = v;
      }
      idx[n] = int32_t(best < 0 ? 0 : best);
    }
  }
};

template <typename T>
struct adamw {
  static void update(T* p, const T* g, T* m, T* v, const kernels::AdamWSpan* spans, int64_t n_spans,
                     const kernels::AdamWStep& k) {
    for (int64_t s = 0; s < n_spans; s++) {
      const kernels::AdamWSpan& sp = spans[s];
      for (int64_t i = 0; i < sp.numel; i++) {
        T& w = p[sp.param + i];
        T& mi = m[sp.moment + i];
        T& vi = v[sp.moment + i];
        const double gi = double(g[sp.moment + i]) * k.grad_scale;
        mi = T(k.beta1 * mi + (1 - k.beta1) * gi);
        vi = T(k.beta2 * vi + (1 - k.beta2) * gi * gi);
        const double decay = sp.decay ? k.decay : 1.0;
        w = T(w * decay - k.step_size * mi / (std::sqrt(double(vi)) / k.bc2_sqrt + k.eps));
      }
    }
  }
};

template <typename T>
struct vec {
  static double sumsq(const T* x, int64_t n, double acc) {
    for (int64_t i = 0; i < n; i++) acc += double(x[i]) * x[i];
    return acc;
  }
  static double sum(const T* x, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += x[i];
    return s;
  }
  static void scale(T* x, T s, int64_t rows, int64_t cols, int64_t stride) {
    for (int64_t r = 0; r < rows; r++)
      for (int64_t j = 0; j < cols; j++) x[r * stride + j] *= s;
  }
  static void fill(T* x, T value, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = value;
  }
  static void fill_normal(T* x, int64_t n, double sd, uint64_t seed, uint64_t stream) {
    for (int64_t i = 0; i < n; i++) x[i] = T(sd * rng_normal(seed, stream, uint64_t(i)));
  }
  static void gram(double* G, const T* const* x, int64_t V, int64_t n) {
    for (int64_t a = 0; a < V; a++)
      for (int64_t b = 0; b < V; b++) {
        double s = 0;
        for (int64_t i = 0; i < n; i++) s += double(x[a][i]) * x[b][i];
        G[a * V + b] = s;
      }
  }
  static void rows_copy(T* dst, const int64_t* dst_at, int64_t dst_step, const T* src,
                        const int64_t* src_at, int64_t m, int64_t cols) {
    for (int64_t r = 0; r < m; r++)
      for (int64_t c = 0; c < cols; c++) dst[dst_at[r] + c * dst_step] = src[src_at[r] + c];
  }
};

template <typename T>
struct sigmoid {
  static void forward(T* y, const T* x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = T(1.0 / (1.0 + std::exp(-double(x[i]))));
  }
  static void backward(T* dx, const T* dy, const T* y, int64_t n) {
    for (int64_t i = 0; i < n; i++) dx[i] = T(double(dy[i]) * y[i] * (1.0 - y[i]));
  }
};

// ----------------------------------------------------------------------------
// adapters and DeRS deltas

template <typename T>
struct lora {
  // W[o, i] (as laid out) += scale * sum_r B[o, r] A[r, i] on the slot's columns
  static void merge(T* W, const T* A, const T* B, const kernels::LowRank& s) {
    for (int64_t o = 0; o < s.out_n; o++)
      for (int64_t i = 0; i < s.I; i++) {
        double acc = 0;
        for (int64_t r = 0; r < s.R; r++) acc += s.scale * double(B[o * s.R + r]) * A[r * s.I + i];
        T& w = s.layout == WLayout::OutIn ? W[(s.out0 + o) * s.I + i] : W[i * s.O + s.out0 + o];
        w = T(double(w) + acc);
      }
  }
  static void expand(T* W, const T* A, const T* B, const kernels::LowRank& s) { merge(W, A, B, s); }
};

template <typename T>
struct delta_sparse {
  static void forward(T* W, const T* base, const int32_t* pos, const T* v, int64_t n, int64_t nnz) {
    for (int64_t i = 0; i < n; i++) W[i] = base[i];
    for (int64_t j = 0; j < nnz; j++) W[pos[j]] += v[j];
  }
  static void backward(T* dv, const T* dW, const int32_t* pos, int64_t nnz) {
    for (int64_t j = 0; j < nnz; j++) dv[j] += dW[pos[j]];
  }
  static void add(T* out, const T* x, const int32_t* pos, const T* v, int64_t N, int64_t I,
                  int64_t O, int64_t nnz) {
    for (int64_t n = 0; n < N; n++)
      for (int64_t j = 0; j < nnz; j++) out[n * O + pos[j] % O] += v[j] * x[n * I + pos[j] / O];
  }
};

template <typename T>
struct delta_quant {
  static void forward(T* W, const T* base, const int8_t* codes, const T* s, int64_t I, int64_t O) {
    for (int64_t i = 0; i < I; i++)
      for (int64_t o = 0; o < O; o++)
        W[i * O + o] = T(base[i * O + o] + double(s[o]) * codes[i * O + o]);
  }
  static void encode(int8_t* codes, const T* delta, const T* s, int64_t I, int64_t O,
                     int64_t bits) {
    const double bound = bits == 1 ? 1.0 : std::ldexp(1.0, int(bits) - 1) - 1.0;
    for (int64_t i = 0; i < I; i++)
      for (int64_t o = 0; o < O; o++) {
        const double d = delta[i * O + o];
        double c = 0;
        if (bits == 1)
          c = d >= 0 ? 1 : -1;
        else if (s[o] > 0)
          c = std::clamp(std::round(d / double(s[o])), -bound, bound);
        codes[i * O + o] = int8_t(c);
      }
  }
};
}  // namespace moelab::ref
