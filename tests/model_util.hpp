#pragma once
// What the whole-model tests share: batches of random tokens, perturbed weights, a tensor's
// gradient against central differences, bitwise comparison and the logits of the last forward.
#include <gtest/gtest.h>

#include <cstring>
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

// The gradient g of tensor t against central differences of the total loss on batch b.
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
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

template <typename T>
std::vector<T> logits_of(const Model<T>& m) {
  return {m.logits().begin(), m.logits().end()};
}

}  // namespace moelab::test
