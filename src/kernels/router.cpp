#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/kernels.hpp"
#include "kernels/parallel.hpp"

namespace moelab::kernels {

template <typename T>
void router<T>::forward(int32_t* idx, T* w, const T* logits, const T* bias, int64_t N, int64_t E,
                        int64_t k) {
#pragma omp parallel for schedule(static) if (parallel_worth(N * E * k))
  for (int64_t n = 0; n < N; n++) {
    const T* z = logits + n * E;
    int32_t* id = idx + n * k;
    T* wr = w + n * k;
    // k rounds of argmax; a strict > keeps the lower index on ties (deterministic, like a
    // stable descending sort). The balance bias only chooses; it never enters the weights.
    for (int64_t j = 0; j < k; j++) {
      int32_t best = -1;
      for (int64_t e = 0; e < E; e++) {
        if (std::find(id, id + j, int32_t(e)) != id + j) continue;
        if (best < 0 || (bias ? z[e] + bias[e] > z[best] + bias[best] : z[e] > z[best]))
          best = int32_t(e);
      }
      id[j] = best;
    }
    T mx = z[id[0]];  // without a bias the first chosen is the largest logit
    if (bias)
      for (int64_t j = 1; j < k; j++) mx = std::max(mx, z[id[j]]);
    T sum = 0;
    for (int64_t j = 0; j < k; j++) sum += (wr[j] = std::exp(z[id[j]] - mx));
    for (int64_t j = 0; j < k; j++) wr[j] /= sum;
  }
}

template <typename T>
void router<T>::backward(T* dlogits, const T* dw, const T* w, const int32_t* idx, int64_t N,
                         int64_t E, int64_t k) {
#pragma omp parallel for schedule(static) if (parallel_worth(N * E))
  for (int64_t n = 0; n < N; n++) {
    T* d = dlogits + n * E;
    std::fill_n(d, E, T(0));
    T s = 0;
    for (int64_t j = 0; j < k; j++) s += w[n * k + j] * dw[n * k + j];
    for (int64_t j = 0; j < k; j++) d[idx[n * k + j]] = w[n * k + j] * (dw[n * k + j] - s);
  }
}

namespace {

// Row softmax probabilities p [N,E] and log-normalisers lse [N], in double.
template <typename T>
void router_probs(std::vector<double>& p, std::vector<double>& lse, const T* logits, int64_t N,
                  int64_t E) {
  p.resize(N * E);
  lse.resize(N);
#pragma omp parallel for schedule(static) if (parallel_worth(N * E))
  for (int64_t n = 0; n < N; n++) {
    const T* z = logits + n * E;
    double mx = z[0], sum = 0;
    for (int64_t e = 1; e < E; e++) mx = std::max(mx, double(z[e]));
    for (int64_t e = 0; e < E; e++) sum += (p[n * E + e] = std::exp(double(z[e]) - mx));
    for (int64_t e = 0; e < E; e++) p[n * E + e] /= sum;
    lse[n] = mx + std::log(sum);
  }
}

std::vector<double> router_fractions(const int32_t* idx, int64_t N, int64_t E, int64_t k) {
  std::vector<double> f(E, 0.0);
  for (int64_t i = 0; i < N * k; i++) f[idx[i]] += 1.0;
  for (double& x : f) x /= double(N * k);
  return f;
}

}  // namespace

template <typename T>
RouterLosses router<T>::loss_forward(const T* logits, const int32_t* idx, int64_t N, int64_t E,
                                     int64_t k, double coef_aux, double coef_z) {
  RouterLosses out;
  if (N == 0) return out;
  std::vector<double> p, lse;
  router_probs(p, lse, logits, N, E);
  const std::vector<double> f = router_fractions(idx, N, E, k);
  std::vector<double> P(E, 0.0);
  for (int64_t n = 0; n < N; n++)
    for (int64_t e = 0; e < E; e++) P[e] += p[n * E + e];
  double aux = 0, z = 0;
  for (int64_t e = 0; e < E; e++) aux += f[e] * P[e] / double(N);
  for (int64_t n = 0; n < N; n++) z += lse[n] * lse[n];
  out.aux = coef_aux * double(E) * aux;
  out.z = coef_z * z / double(N);
  out.aux_raw = double(E) * aux;
  out.z_raw = z / double(N);
  return out;
}

template <typename T>
void router<T>::loss_backward(T* dlogits, const T* logits, const int32_t* idx, int64_t N, int64_t E,
                              int64_t k, double coef_aux, double coef_z, double scale) {
  if (N == 0 || (coef_aux == 0 && coef_z == 0)) return;
  std::vector<double> p, lse;
  router_probs(p, lse, logits, N, E);
  const std::vector<double> f = router_fractions(idx, N, E, k);
  // aux: the routing fractions f are constants; only the mean probabilities P carry gradient.
  const double ca = scale * coef_aux * double(E) / double(N), cz = scale * coef_z * 2.0 / double(N);
#pragma omp parallel for schedule(static) if (parallel_worth(N * E))
  for (int64_t n = 0; n < N; n++) {
    const double* pr = p.data() + n * E;
    double fp = 0;
    for (int64_t e = 0; e < E; e++) fp += f[e] * pr[e];
    for (int64_t e = 0; e < E; e++)
      dlogits[n * E + e] += T(ca * pr[e] * (f[e] - fp) + cz * lse[n] * pr[e]);
  }
}

template struct router<float>;
template struct router<double>;

}  // namespace moelab::kernels
