#pragma once
// AdamW with decoupled weight decay (none on norms, biases and sinks) and global-norm gradient
// clipping, on the flat parameters of a ParamLayout. Gradients and moments exist for trainable
// tensors only, packed alike (layout_pack): freezing all but an adapter or one layer leaves
// them that small.
#include <cstdint>
#include <span>
#include <vector>

#include "backend/device.hpp"
#include "model/params.hpp"

namespace moelab {

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

// Trainable parameters [param, param + numel) whose moments are [moment, moment + numel) of m and
// v: adjacent trainable tensors with the same decay share one span.
using AdamWSpan = kernels::AdamWSpan;

template <typename T>
class AdamW {
 public:
  // The trainable set is the layout's at construction: freeze first, or call sync_trainable().
  // The update runs as the device's op.
  AdamW(const ParamLayout& layout, AdamWConfig cfg, Device& dev = device_default());
  // One update at learning rate lr (PyTorch's AdamW arithmetic, step by step), on the gradients
  // times grad_scale: clipping folded into the update saves a pass over the gradients.
  // params [layout.total], grads [m.size()] packed as the moments.
  void update(std::span<T> params, std::span<const T> grads, double lr, double grad_scale = 1.0);
  // Follows a change of the layout's frozen set. Before the first step the moments are all zero
  // and are simply re-laid out; after it, a change is refused naming a tensor that changed
  // (its moments would be missing or stale). update() and checkpoint loading call it.
  void sync_trainable();
  // Whether the moments are laid out for the layout's frozen set as it is now.
  bool in_sync() const;
  // Offset of tensor i's moments in m and v (layout order), or -1 where it has none (frozen).
  int64_t moment_offset(size_t tensor) const { return moment_at_[tensor]; }
  const ParamLayout& layout() const { return *layout_; }
  std::span<const AdamWSpan> spans() const { return spans_; }

  AdamWConfig cfg;
  std::vector<T> m, v;  // first and second moments of the trainable tensors, packed in layout order
  int64_t step = 0;

 private:
  void build();

  const ParamLayout* layout_;
  const Ops<T>* op_;
  std::vector<AdamWSpan> spans_;
  std::vector<int64_t> moment_at_;  // per layout tensor; -1: frozen when built
};

// L2 norm of the gradients of trainable tensors, grads packed (layout_pack). Deterministic for
// any thread count.
template <typename T>
double grad_global_norm(const ParamLayout& layout, std::span<const T> grads,
                        const Ops<T>& op = device_default().ops<T>());

// The factor global-norm clipping applies: max_norm / norm when the norm exceeds max_norm > 0.
inline double grad_clip_scale(double norm, double max_norm) {
  return max_norm > 0 && norm > max_norm ? max_norm / (norm + 1e-6) : 1.0;
}

// Both in one: scales the gradients in place, returns the norm before clipping.
template <typename T>
double grad_clip_global_norm(const ParamLayout& layout, std::span<T> grads, double max_norm,
                             const Ops<T>& op = device_default().ops<T>());

}  // namespace moelab
