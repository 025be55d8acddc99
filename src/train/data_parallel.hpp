#pragma once
// Data-parallel gradient sums with overlap: the gradient buffer split into buckets, one per
// layer (its tensors' ranges) and one for the rest, each summed over the ranks as soon as the
// backward pass has finished it (Model::on_grads_ready), while the layers below are computed.
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "model/params.hpp"
#include "train/collective.hpp"

namespace moelab {

// Rank r of P takes the micro-batches m with m % P == r of every step, so that the P ranks
// together take one process's global batch: grad_accum must be a multiple of P (one line
// naming `source` otherwise).
void data_parallel_check(const std::string& source, int64_t grad_accum, int64_t processes);

class GradSync {
 public:
  // grads: the trainable tensors' gradients, packed (layout_pack: frozen tensors have none, and
  // nothing of theirs is sent); L layers, named model.layers.N.* in the layout
  GradSync(const ParamLayout& layout, std::span<float> grads, int64_t layers, Collective& comm);
  // Layer l's gradients are final (-1: the rest); starts their sum. With overlap off, sums are
  // only started at the end, all at once (for measuring what the overlap buys).
  void ready(int64_t layer);
  // Waits for every bucket (starting those not started); returns the seconds spent waiting.
  double finish();
  int64_t bytes() const { return bytes_; }  // gradient bytes summed per step
  // Per bucket: its name and bytes (the estimate of the wire traffic in docs/distributed.md)
  std::vector<std::pair<std::string, int64_t>> buckets() const;
  bool overlap = true;

 private:
  struct Bucket {
    std::string name;
    std::vector<std::pair<int64_t, int64_t>> ranges;  // [offset, end) in packed grads, merged
    bool started = false;
  };
  void start(Bucket& b);
  std::span<float> grads_;
  Collective& comm_;
  std::vector<Bucket> layer_;  // [L]
  Bucket rest_;
  int64_t bytes_ = 0;
};

}  // namespace moelab
