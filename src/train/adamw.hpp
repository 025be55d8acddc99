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
  // One update at learning rate lr (PyTorch's AdamW arithmetic, step by step), on the gradients
  // times grad_scale: clipping folded into the update saves a pass over the gradients.
  void update(std::span<T> params, std::span<const T> grads, double lr, double grad_scale = 1.0);

  AdamWConfig cfg;
  std::vector<T> m, v;  // first and second moments, same layout as the parameters
  int64_t step = 0;

 private:
  const ParamLayout* layout_;
};

// L2 norm of the gradients of trainable tensors. Deterministic for any thread count.
template <typename T>
double grad_global_norm(const ParamLayout& layout, std::span<const T> grads);

// The factor global-norm clipping applies: max_norm / norm when the norm exceeds max_norm > 0.
inline double grad_clip_scale(double norm, double max_norm) {
  return max_norm > 0 && norm > max_norm ? max_norm / (norm + 1e-6) : 1.0;
}

// Both in one: scales the gradients in place, returns the norm before clipping.
template <typename T>
double grad_clip_global_norm(const ParamLayout& layout, std::span<T> grads, double max_norm);

}  // namespace moelab
