#pragma once
// AdamW with decoupled weight decay (none on norms, biases and sinks) and global-norm gradient
// clipping, on the flat parameters of a ParamLayout. Gradients and moments exist for trainable
// tensors only, packed alike (layout_pack): freezing all but an adapter or one layer leaves
// them that small.
#include <cstdint>
#include <span>
#include <utility>
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
  // With shard_ranks > 1, the shard of set_shard from the start (the whole moments are never
  // allocated: they would set the peak memory of a large model).
  AdamW(const ParamLayout& layout, AdamWConfig cfg, Device& dev = device_default(),
        int shard_rank = 0, int shard_ranks = 1);
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
  // Offset of tensor i's moments in the packed space (layout order; in m and v when unsharded),
  // or -1 where it has none (frozen).
  int64_t moment_offset(size_t tensor) const { return moment_at_[tensor]; }
  const ParamLayout& layout() const { return *layout_; }
  // Every trainable span, moments at their offsets in the whole packed space.
  std::span<const AdamWSpan> spans() const { return spans_; }

  // ZeRO stage 1 (train/zero.hpp): keep the moments of, and update, shard `rank` of `ranks`
  // alone. The packed space [0, n) is cut at elements into near-equal contiguous shards,
  // shard r = [n r / P, n (r + 1) / P), whatever the tensors. Before the first step only: the
  // moments are laid out anew, zero (a checkpoint's are loaded after).
  void set_shard(int rank, int ranks);
  int shard_rank() const { return shard_rank_; }
  int shard_ranks() const { return shard_ranks_; }
  // Rank r's shard of the packed space, [begin, end).
  std::pair<int64_t, int64_t> shard_range(int rank) const;
  // Elements of the packed space: the gradients, and every shard's moments together.
  int64_t packed_size() const { return packed_; }
  // Takes the whole moments ([packed_size()] each) and becomes unsharded: the copy of a sharded
  // optimizer that a checkpoint writes (zero_gather_moments).
  void unshard(std::vector<T> m_all, std::vector<T> v_all);

  AdamWConfig cfg;
  // First and second moments of the shard [shard_range(shard_rank())) of the trainable tensors,
  // packed in layout order (unsharded: all of them): m[i] belongs to packed offset begin + i.
  std::vector<T> m, v;
  int64_t step = 0;

 private:
  void build();
  void build_shard();

  const ParamLayout* layout_;
  const Ops<T>* op_;
  std::vector<AdamWSpan> spans_;
  std::vector<AdamWSpan> shard_spans_;  // spans_ cut to the shard, moments relative to its start
  std::vector<int64_t> moment_at_;      // per layout tensor; -1: frozen when built
  int64_t packed_ = 0;
  int shard_rank_ = 0, shard_ranks_ = 1;
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
