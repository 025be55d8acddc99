#include "model/lora.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/error.hpp"

namespace moelab {

using kernels::WLayout;

namespace {

// The weights that can carry adapters, in block order: the same list for a model and its merged
// twin, whose blocks are built from the same config but for "lora".
std::vector<const Weight*> lora_weights(const ModelParams& mp) {
  std::vector<const Weight*> w;
  for (const AttentionParams& a : mp.attn) {
    w.push_back(&a.qkv);
    w.push_back(&a.o);
  }
  for (const FfnParams& f : mp.ffn) {
    w.push_back(&f.router);
    w.push_back(&f.up);
    w.push_back(&f.down);
  }
  return w;
}

int64_t lora_tensor_count(const ParamLayout& p) {
  return std::count_if(p.tensors.begin(), p.tensors.end(),
                       [](const TensorView& t) { return t.name.ends_with(".lora_A.weight"); });
}

// W_e[out0 + o, :] += scale * B_e[o, :] A_e for every expert e of one slot (the device's
// lora_merge op: the row of B A summed in double, added with one rounding). W points at `to`'s
// matrix of the weight (expert 0), P at `from`'s parameters (A and B).
template <typename T>
void lora_merge_slot(const Ops<T>& op, const T* P, const Weight& w, const LoraSlot& s, T* W) {
  const kernels::LowRank lr{w.in, w.out, s.rank, s.out0, s.out_n, s.scale, w.layout};
  for (int64_t e = 0; e < w.experts; e++)
    op.lora_merge(W + e * w.in * w.out, P + s.A_at(e, w.in), P + s.B_at(e), lr);
}

}  // namespace

ModelConfig lora_merged_config(const ModelConfig& c) {
  ModelConfig m = c;
  m.lora = LoraConfig{};
  return m;
}

int64_t lora_slot_count(const ModelParams& mp) {
  int64_t n = 0;
  for (const Weight* w : lora_weights(mp)) n += int64_t(w->lora.size());
  return n;
}

template <typename T>
void lora_merge(const Model<T>& from, Model<T>& to) {
  check(config_to_json(to.cfg) == config_to_json(lora_merged_config(from.cfg)),
        "lora_merge: the target model is not built from the merged config");
  // Every base tensor by name: the merged layout is the adapted one without its adapters.
  for (const TensorView& t : to.layout.tensors) {
    const TensorView* f = from.layout.find(t.name);
    check(f && f->shape == t.shape, "lora_merge: a base tensor differs between the models");
    std::copy_n(from.params.begin() + f->offset, t.numel, to.params.begin() + t.offset);
  }
  const std::vector<const Weight*> fw = lora_weights(from.blocks()), tw = lora_weights(to.blocks());
  check(fw.size() == tw.size(), "lora_merge: the models have different blocks");
  int64_t merged = 0;
  for (size_t i = 0; i < fw.size(); i++) {
    const Weight &f = *fw[i], &t = *tw[i];
    check(f.in == t.in && f.out == t.out && f.layout == t.layout && f.experts == t.experts &&
              t.lora.empty() && (f.w >= 0) == (t.w >= 0),
          "lora_merge: a weight differs between the models");
    for (const LoraSlot& s : f.lora) {
      lora_merge_slot(to.device().template ops<T>(), from.params.data(), f, s,
                      to.params.data() + t.w);
      merged++;
    }
  }
  // An adapter on a weight missing from lora_weights would be dropped silently: refuse instead.
  check(merged == lora_tensor_count(from.layout),
        "lora_merge: an adapter rides on a weight that lora_weights does not list");
}

template void lora_merge(const Model<float>&, Model<float>&);
template void lora_merge(const Model<double>&, Model<double>&);

}  // namespace moelab
