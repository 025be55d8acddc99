#include "train/data_parallel.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <string>

#include "core/error.hpp"

namespace moelab {

void data_parallel_check(const std::string& source, int64_t grad_accum, int64_t processes) {
  if (grad_accum % processes != 0) {
    fail(fmt::format(
        "{}: 'train.grad_accum' ({}) must be a multiple of the number of processes ({}): each "
        "takes grad_accum / {} micro-batches of every step",
        source, grad_accum, processes, processes));
  }
}

namespace {

// "model.layers.12.mlp..." -> 12; -1 for tensors outside the layers
int64_t layer_of(const std::string& name) {
  const std::string prefix = "model.layers.";
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  return std::stoll(name.substr(prefix.size()));
}

void merge(std::vector<std::pair<int64_t, int64_t>>& r) {
  std::sort(r.begin(), r.end());
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const auto& x : r)
    if (!out.empty() && out.back().second == x.first)
      out.back().second = x.second;
    else
      out.push_back(x);
  r = std::move(out);
}

}  // namespace

GradSync::GradSync(const ParamLayout& layout, std::span<float> grads, int64_t layers,
                   Collective& comm)
    : grads_(grads), comm_(comm), layer_(size_t(layers)) {
  const PackedLayout packed = layout_pack(layout);
  check(int64_t(grads.size()) == packed.total,
        "data parallel: one gradient per trainable parameter, packed");
  for (int64_t l = 0; l < layers; l++) layer_[size_t(l)].name = fmt::format("layer {}", l);
  rest_.name = "embedding, head, norm";
  for (size_t i = 0; i < layout.tensors.size(); i++) {
    const TensorView& t = layout.tensors[i];
    const int64_t l = layer_of(t.name);
    check(l < layers, "data parallel: a tensor of a layer beyond the model's");
    if (packed.at[i] < 0) {  // frozen: no gradient to sum
      continue;
    }
    (l >= 0 ? layer_[size_t(l)] : rest_).ranges.emplace_back(packed.at[i], packed.at[i] + t.numel);
    bytes_ += t.numel * int64_t(sizeof(float));
  }
  for (auto& b : layer_) merge(b.ranges);
  merge(rest_.ranges);
}

void GradSync::start(Bucket& b) {
  if (b.started) return;
  b.started = true;
  for (const auto& [lo, hi] : b.ranges)
    comm_.sum_start(grads_.subspan(size_t(lo), size_t(hi - lo)));
}

void GradSync::ready(int64_t layer) {
  if (!overlap) return;
  start(layer >= 0 ? layer_[size_t(layer)] : rest_);
  comm_.progress();
}

double GradSync::finish() {
  // every rank starts the buckets in the same order: the layers from the last, then the rest
  for (auto it = layer_.rbegin(); it != layer_.rend(); ++it) start(*it);
  start(rest_);
  const auto t0 = std::chrono::steady_clock::now();
  comm_.wait_sums();
  for (auto& b : layer_) b.started = false;
  rest_.started = false;
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<std::pair<std::string, int64_t>> GradSync::buckets() const {
  std::vector<std::pair<std::string, int64_t>> out;
  auto bytes = [](const Bucket& b) {
    int64_t n = 0;
    for (const auto& [lo, hi] : b.ranges) n += (hi - lo) * int64_t(sizeof(float));
    return n;
  };
  for (const auto& b : layer_) out.emplace_back(b.name, bytes(b));
  out.emplace_back(rest_.name, bytes(rest_));
  return out;
}

}  // namespace moelab
