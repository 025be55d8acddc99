#pragma once
// AdamW with decoupled weight decay (none on norms, biases and sinks) and global-norm gradient
// clipping, on the flat buffers of a ParamLayout. Frozen tensors are skipped.
#include <cstdint>
#include <span>
#include <vector>

#include "model/params.hpp"

namespace moelab {

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

template <typename T>
class AdamW {
 public:
  AdamW(const ParamLayout& layout, AdamWConfig cfg);
  // One update at learning rate lr (PyTorch's AdamW arithmetic, step by step).
  void update(std::span<T> params, std::span<const T> grads, double lr);

  AdamWConfig cfg;
  std::vector<T> m, v;  // first and second moments, same layout as the parameters
  int64_t step = 0;

 private:
  const ParamLayout* layout_;
};

// L2 norm of the gradients of trainable tensors; if max_norm > 0 and the norm exceeds it, the
// gradients are scaled by max_norm / norm. Deterministic for any thread count.
template <typename T>
double grad_clip_global_norm(const ParamLayout& layout, std::span<T> grads, double max_norm);

}  // namespace moelab
