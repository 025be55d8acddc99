#pragma once
// What the whole-model tests share: batches of random tokens, perturbed weights, a tensor's
// gradient against central differences, bitwise comparison and the logits of the last forward.
#include <gtest/gtest.h>

#include <cstring>
#include <span>
#include <vector>

#include "core/rng.hpp"
#include "model/model.hpp"
#include "test_util.hpp"

namespace moelab::test {

struct Batch {
  std::vector<int32_t> tokens, targets;
};

// N tokens of a V-word vocabulary; every fifth target is ignored (-1).
inline Batch batch(int64_t N, int64_t V, uint64_t seed) {
  Batch b;
  for (int64_t i = 0; i < N; i++) {
    b.tokens.push_back(int32_t(rng_u64(seed, 1, uint64_t(i)) % uint64_t(V)));
    b.targets.push_back(i % 5 == 2 ? -1 : int32_t(rng_u64(seed, 2, uint64_t(i)) % uint64_t(V)));
  }
  return b;
}

// Perturb the ones/zeros-initialised tensors so every parameter matters.
template <typename T>
void jitter(Model<T>& m, uint64_t seed) {
  for (size_t ti = 0; ti < m.layout.tensors.size(); ti++) {
    const TensorView& t = m.layout.tensors[ti];
    for (int64_t i = 0; i < t.numel; i++)
      m.params[size_t(t.offset + i)] += T(0.2 * rng_normal(seed, ti, uint64_t(i)));
  }
}

// The model's gradients at the parameters' offsets ([layout.total]; a frozen tensor's: zero),
// from the packed buffer that holds the trainable tensors alone.
template <typename T>
std::vector<T> grad_full(const Model<T>& m) {
  std::vector<T> g(size_t(m.layout.total), T(0));
  for (const TensorView& t : m.layout.tensors) {
    const std::span<const T> s = m.grad_of(t);
    std::copy(s.begin(), s.end(), g.begin() + t.offset);
  }
  return g;
}

// The gradient g ([layout.total], grad_full) of tensor t against central differences of the
// total loss on batch b.
inline void expect_tensor_fd(Model<double>& m, const Batch& b, const std::vector<double>& g,
                             const TensorView& t, int64_t checks) {
  std::vector<double> x(m.params.begin() + t.offset, m.params.begin() + t.offset + t.numel);
  std::vector<double> gt(g.begin() + t.offset, g.begin() + t.offset + t.numel);
  expect_fd(
      x, gt,
      [&] {
        std::copy(x.begin(), x.end(), m.params.begin() + t.offset);
        return m.forward(b.tokens, b.targets).total();
      },
      t.name, 1e-6, 2e-5, 1e-8, checks);
  std::copy(x.begin(), x.end(), m.params.begin() + t.offset);
}

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  // memcmp of empty vectors would pass null pointers (undefined, and UBSan stops on it)
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

template <typename T>
std::vector<T> logits_of(const Model<T>& m) {
  return {m.logits().begin(), m.logits().end()};
}

// delta_e [in, out] of a DeRS model's expert e of the routed weight `name` (e.g.
// model.layers.0.mlp.experts.gate_up_proj), computed here from the stored tensors, not by the
// model's own rebuild.
template <typename T>
std::vector<double> ders_delta(const Model<T>& m, const std::string& name, int64_t e) {
  const TensorView* base = m.layout.find(name + "_base");
  const int64_t I = base->shape[0], O = base->shape[1];
  std::vector<double> d(size_t(I * O), 0.0);
  const DersConfig& ds = m.cfg.ders;
  if (ds.delta == DeltaKind::Sparse) {
    const TensorView* v = m.layout.find(name + "_delta_values");
    const IntTensor* pos = m.layout.find_int(name + "_delta_indices");
    const int64_t nnz = v->shape[1];
    for (int64_t j = 0; j < nnz; j++)
      d[size_t(m.index[size_t(pos->offset + e * nnz + j)])] +=
          double(m.params[size_t(v->offset + e * nnz + j)]);
  } else if (ds.delta == DeltaKind::LowRank) {
    const TensorView *A = m.layout.find(name + "_delta_A"), *B = m.layout.find(name + "_delta_B");
    const int64_t R = A->shape[1];
    for (int64_t i = 0; i < I; i++)
      for (int64_t o = 0; o < O; o++)
        for (int64_t r = 0; r < R; r++)
          d[size_t(i * O + o)] += ds.scale() *
                                  double(m.params[size_t(A->offset + (e * R + r) * I + i)]) *
                                  double(m.params[size_t(B->offset + (e * O + o) * R + r)]);
  } else {
    const IntTensor* q = m.layout.find_int(name + "_delta_codes");
    const TensorView* s = m.layout.find(name + "_delta_scales");
    for (int64_t i = 0; i < I; i++)
      for (int64_t o = 0; o < O; o++)
        d[size_t(i * O + o)] = double(m.params[size_t(s->offset + e * O + o)]) *
                               double(m.codes[size_t(q->offset + e * I * O + i * O + o)]);
  }
  return d;
}

// Expert e's whole matrix [in, out]: base + delta_e, in double.
template <typename T>
std::vector<double> ders_expert(const Model<T>& m, const std::string& name, int64_t e) {
  const TensorView* base = m.layout.find(name + "_base");
  std::vector<double> w = ders_delta(m, name, e);
  for (int64_t i = 0; i < base->numel; i++)
    w[size_t(i)] += double(m.params[size_t(base->offset + i)]);
  return w;
}

}  // namespace moelab::test
