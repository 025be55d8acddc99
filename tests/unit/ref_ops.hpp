#pragma once
// Scalar references: the plainest loops that compute each op, written from the formulas of
// docs/methods.md §3 rather than from the kernels. Same interface as src/kernels/kernels.hpp;
// tests only.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

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
                      WLayout l) {
    for (int64_t n = 0; n < N; n++)
      for (int64_t o = 0; o < O; o++) {
        double s = b ? double(b[o]) : 0.0;
        for (int64_t i = 0; i < I; i++) s += double(x[n * I + i]) * w_at(W, o, i, I, O, l);
        out[n * O + o] = T(s);
      }
  }
  static void backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, int64_t N,
                       int64_t I, int64_t O, WLayout l, bool dx_accumulate = false) {
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
    return {ca * double(E) * aux, cz * z};
  }
};

template <typename T>
struct cross_entropy {
  static double forward(T* lse, const T* logits, const int32_t* targets, int64_t N, int64_t V) {
    double total = 0;
    for (int64_t n = 0; n < N; n++) {
      double sum = 0;
      for (int64_t v = 0; v < V; v++) sum += std::exp(double(logits[n * V + v]));
      lse[n] = T(std::log(sum));
      if (targets[n] >= 0) total += std::log(sum) - logits[n * V + targets[n]];
    }
    return total;
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

}  // namespace moelab::ref
