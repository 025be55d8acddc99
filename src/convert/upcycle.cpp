#include "convert/upcycle.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "convert/checkpoint.hpp"
#include "core/error.hpp"
#include "core/parse.hpp"

namespace moelab {

namespace fs = std::filesystem;

// ----------------------------------------------------------------------------
// options

DersConfig upcycle_parse_delta(std::string_view s) {
  DersConfig d;
  d.base = "shared";
  if (!ders_parse_spelling(s, d) || d.delta == DeltaKind::Quant)
    fail(
        fmt::format("--delta '{}': expected none, sparse:P (P the share dropped, e.g. 0.9) or "
                    "lowrank:R (R the rank)",
                    s));
  return d;
}

std::vector<int64_t> upcycle_layers(const std::string& spec, int64_t L) {
  std::vector<int64_t> out;
  if (spec == "all") {
    for (int64_t l = 0; l < L; l++) out.push_back(l);
    return out;
  }
  if (spec == "every-other") {
    for (int64_t l = 1; l < L; l += 2) out.push_back(l);
    if (out.empty())
      fail(fmt::format("--layers every-other: the model has {} layer, no odd one to upcycle", L));
    return out;
  }
  size_t at = 0;
  while (at <= spec.size()) {
    const size_t comma = std::min(spec.find(',', at), spec.size());
    int64_t l = 0;
    if (!parse_number(std::string_view(spec).substr(at, comma - at), l))
      fail(
          fmt::format("--layers '{}': expected all, every-other or a list of layer indices "
                      "such as 1,3",
                      spec));
    if (l < 0 || l >= L)
      fail(fmt::format("--layers '{}': layer {} is out of range [0, {})", spec, l, L));
    if (std::find(out.begin(), out.end(), l) != out.end())
      fail(fmt::format("--layers '{}': layer {} is listed twice", spec, l));
    out.push_back(l);
    at = comma + 1;
  }
  std::sort(out.begin(), out.end());
  return out;
}

namespace {

// The source must be a plain dense model: one expert (a one-expert MoE computes as dense), no
// MoE-CT, no adapters.
void upcycle_check_source(const ModelConfig& c, std::string_view source) {
  if (c.num_local_experts != 1)
    fail(fmt::format("{}: upcycle needs a dense checkpoint (it has {} experts)", source,
                     c.num_local_experts));
  if (c.moe_ct.experts > 0)
    fail(fmt::format("{}: upcycle needs a dense checkpoint (it has {} MoE-CT experts)", source,
                     c.moe_ct.experts));
  if (c.lora.rank > 0)
    fail(
        fmt::format("{}: upcycle needs a checkpoint without LoRA adapters (merge them first: "
                    "moelab export --merge-lora)",
                    source));
}

void upcycle_check_flags(const ModelConfig& c, const UpcycleOptions& o) {
  const int64_t N = o.experts, G = o.granularity, I = c.intermediate_size;
  if (N < 2) fail(fmt::format("--experts: must be at least 2 (got {})", N));
  if (o.top_k < 1 || o.top_k > N)
    fail(fmt::format("--top-k: must be in [1, --experts = {}] (got {})", N, o.top_k));
  if (G < 1) fail(fmt::format("--granularity: must be at least 1 (got {})", G));
  if (I % G != 0)
    fail(fmt::format("--granularity {}: does not divide intermediate_size ({})", G, I));
  if (N > 65536 / G)
    fail(fmt::format("--experts {} x --granularity {}: more than 65536 experts", N, G));
  if (G > 1 && o.universal_ffn)
    fail("--granularity: must be 1 with --universal-ffn (the kept FFN is whole)");
  const int64_t chosen = int64_t(upcycle_layers(o.layers, c.num_hidden_layers).size());
  if (G > 1 && chosen < c.num_hidden_layers)
    fail(
        fmt::format("--granularity {}: needs every layer upcycled (a config has one "
                    "intermediate_size, so the dense layers' FFN would shrink too)",
                    G));
  if (o.seed > uint64_t(INT64_MAX))
    fail(fmt::format("--seed: must be below 2^63 (got {})", o.seed));
  const DersConfig& d = o.ders;
  if (!d.on()) return;
  if (d.delta != DeltaKind::Sparse && d.delta != DeltaKind::LowRank)
    fail(
        "--delta: only sparse:P and lowrank:R deltas upcycle (quantized ones come from "
        "moelab compress)");
  if (G > 1) fail("--delta: needs --granularity 1 (the shared base is the whole FFN)");
  if (o.universal_ffn) fail("--delta: cannot be combined with --universal-ffn");
  if (d.delta == DeltaKind::Sparse && !(d.p >= 0 && d.p < 1))
    fail(fmt::format("--delta sparse:{}: P (the share dropped) must be in [0, 1)", d.p));
  const int64_t full = std::min(c.hidden_size, I);
  if (d.delta == DeltaKind::LowRank && (d.rank < 1 || d.rank > full))
    fail(
        fmt::format("--delta lowrank:{}: R must be in [1, min(hidden_size, intermediate_size) "
                    "= {}]",
                    d.rank, full));
}

}  // namespace

ModelConfig upcycle_config(const ModelConfig& dense, const UpcycleOptions& o,
                           std::string_view source) {
  upcycle_check_source(dense, source);
  upcycle_check_flags(dense, o);
  const int64_t L = dense.num_hidden_layers, G = o.granularity;
  std::vector<int64_t> layers = upcycle_layers(o.layers, L);
  if (int64_t(layers.size()) == L) layers.clear();  // every layer: the config's "all"
  ModelConfig c = dense;
  if (o.universal_ffn) {
    c.moe_ct = {.experts = o.experts,
                .top_k = o.top_k,
                .gate = CtGate::Fixed,
                .lambda = 0.5,
                .copy = true,
                .layers = layers};
  } else {
    c.ffn_type = FfnKind::Moe;
    c.num_local_experts = o.experts * G;
    c.num_experts_per_tok = o.top_k * G;
    c.intermediate_size = dense.intermediate_size / G;
    c.moe_layers = layers;
    c.ders = o.ders;
    if (c.ders.on()) c.ders.seed = o.seed, c.ders.base = "shared";
  }
  config_validate(c, source);
  return c;
}

// ----------------------------------------------------------------------------
// weights

namespace {

// A routed layer's experts from its dense FFN `from`: expert e is slice s = e mod G of the
// hidden units (I' = I/G of them). gate_up_proj interleaves gate and linear columns (2j, 2j+1
// for hidden unit j), so a slice is the contiguous column block [2 s I', 2 (s+1) I') of every
// row; down_proj's slice is rows [s I', (s+1) I'), scaled by G (the router gives each of a
// group's G tied experts w/G). The down bias is whole in each: G copies at w/G sum to w. With
// DeRS the base (one matrix for all experts, G = 1) is the FFN's matrix and the deltas stay zero.
template <typename T>
void upcycle_experts(const FfnParams& from, const FfnParams& to, int64_t G, const T* P, T* Q) {
  const Weight &fu = from.up, &fd = from.down, &tu = to.up, &td = to.down;
  const int64_t d = fu.in, I2 = tu.out, Is = td.in, E = tu.experts;  // I2 = 2 I', Is = I'
  check(fu.experts == 1 && fu.out == G * I2 && fd.in == G * Is && td.out == d,
        "upcycle: the dense FFN and the experts do not match");
  for (int64_t e = 0; e < (tu.shared ? 1 : E); e++) {
    const int64_t s = e % G;
    for (int64_t i = 0; i < d; i++)
      std::copy_n(P + fu.w + i * fu.out + s * I2, I2, Q + tu.w_at(e) + i * I2);
  }
  for (int64_t e = 0; e < (td.shared ? 1 : E); e++) {
    const T* src = P + fd.w + (e % G) * Is * d;
    T* dst = Q + td.w_at(e);
    for (int64_t j = 0; j < Is * d; j++) dst[j] = T(G) * src[j];
  }
  for (int64_t e = 0; e < E; e++) {
    std::copy_n(P + fu.b + (e % G) * I2, I2, Q + tu.b + e * I2);
    std::copy_n(P + fd.b, d, Q + td.b + e * d);
  }
  // the G router rows of a group: copies of its first (the bias is zero, as init_weights left it)
  for (int64_t e = 0; e < E; e++)
    if (e % G != 0) std::copy_n(Q + to.router.w + (e - e % G) * d, d, Q + to.router.w + e * d);
}

}  // namespace

template <typename T>
void upcycle_model(const Model<T>& dense, Model<T>& moe, const UpcycleOptions& o) {
  check(config_to_json(moe.cfg) == config_to_json(upcycle_config(dense.cfg, o, "upcycle")),
        "upcycle_model: the MoE model is not built from upcycle_config of the dense one");
  moe.init_weights(o.seed);
  std::set<std::string> used;
  for (const TensorView& t : moe.layout.tensors) {
    const TensorView* s = dense.layout.find(t.name);
    if (!s || s->shape != t.shape) continue;
    std::copy_n(dense.params.begin() + s->offset, t.numel, moe.params.begin() + t.offset);
    used.insert(t.name);
  }
  const int64_t L = moe.cfg.num_hidden_layers;
  for (int64_t l = 0; l < L; l++) {
    if (!moe.cfg.moe_at(l)) continue;
    upcycle_experts(dense.blocks().ffn[size_t(l)], moe.blocks().ffn[size_t(l)], o.granularity,
                    dense.params.data(), moe.params.data());
    for (const char* n : {"gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"})
      used.insert(fmt::format("model.layers.{}.mlp.experts.{}", l, n));
  }
  // MoE-CT's new experts copy their layer's FFN, now that it holds the dense weights
  if (o.universal_ffn)
    moe.init_derived(
        [](const std::string& name) { return name.find(".mlp.ct.") != std::string::npos; });
  // Every dense tensor has its place; only a one-expert MoE's router (one choice, weight 1) goes.
  for (const TensorView& t : dense.layout.tensors)
    check(used.contains(t.name) || t.name.find(".mlp.router.") != std::string::npos,
          fmt::format("upcycle: the dense tensor '{}' has no place in the MoE model", t.name));
}

template void upcycle_model(const Model<float>&, Model<float>&, const UpcycleOptions&);
template void upcycle_model(const Model<double>&, Model<double>&, const UpcycleOptions&);

// ----------------------------------------------------------------------------
// the checkpoint folder

namespace {

// Parameters of layer l's FFN (every tensor under model.layers.L.mlp.).
int64_t ffn_params(const ParamLayout& p, int64_t l) {
  const std::string pre = fmt::format("model.layers.{}.mlp.", l);
  int64_t n = 0;
  for (const TensorView& t : p.tensors)
    if (t.name.starts_with(pre)) n += t.numel;
  return n;
}

// Parameters active per token: config_count's, plus where a layer has MoE-CT its router and the
// top-k new experts (config_count counts the layer's own FFN only).
int64_t active_params(const ModelConfig& c) {
  const ParamCounts p = config_count(c);
  const int64_t d = c.hidden_size, N = c.moe_ct.experts;
  int64_t a = p.active;
  for (int64_t l = 0; l < c.num_hidden_layers; l++)
    if (c.moe_ct.on(l)) a += N * d + N + c.moe_ct.top_k * p.per_expert;
  return a;
}

std::string layer_summary(const ModelConfig& c, const UpcycleOptions& o, int64_t l) {
  const int64_t G = o.granularity;
  if (ffn_kind(c, l) == FfnKind::MoeCt)
    return fmt::format("dense FFN kept + {} copies routed top-{}, out = 0.5 FFN + 0.5 MoE",
                       o.experts, o.top_k);
  if (!c.moe_at(l)) return "dense FFN copied";
  std::string s = fmt::format("{} experts top-{}", c.num_local_experts, c.num_experts_per_tok);
  if (G > 1)
    s += fmt::format(" ({} groups of {} slices of {} hidden units)", o.experts, G,
                     c.intermediate_size);
  else
    s += " (copies of the FFN)";
  if (c.ders.delta == DeltaKind::Sparse) s += fmt::format(", DeRS sparse delta p = {}", c.ders.p);
  if (c.ders.delta == DeltaKind::LowRank)
    s += fmt::format(", DeRS low-rank delta r = {}", c.ders.rank);
  return s;
}

nlohmann::json options_json(const UpcycleOptions& o) {
  const std::string delta = ders_spelling(o.ders);
  return {{"experts", o.experts},
          {"top_k", o.top_k},
          {"layers", o.layers},
          {"granularity", o.granularity},
          {"universal_ffn", o.universal_ffn},
          {"delta", delta},
          {"seed", o.seed}};
}

}  // namespace

void upcycle_write(const std::string& ckpt, const UpcycleOptions& o, const std::string& out) {
  std::error_code ec;
  if (!fs::is_directory(ckpt, ec)) fail(fmt::format("{}: no such checkpoint folder", ckpt));
  if (fs::exists(out, ec) || fs::is_symlink(out, ec))
    fail(fmt::format("--out {}: already exists (upcycle never replaces a folder)", out));
  const std::string config_path = (fs::path(ckpt) / "config.json").string();
  if (!fs::exists(config_path, ec))
    fail(fmt::format("{}: not a checkpoint (no config.json)", ckpt));
  const ModelConfig dc = config_load(config_path);
  const ModelConfig mc = upcycle_config(dc, o, ckpt);  // every refusal before the weights are read
  Model<float> dense(dc, 1, 1);
  nlohmann::json state = checkpoint_load_model(ckpt, dense);
  for (const char* key : {"loaders", "optimizer_step", "optimizer_moments", "replay"})
    state.erase(key);
  state["upcycled_from"] = ckpt;
  state["upcycle"] = options_json(o);
  Model<float> moe(mc, 1, 1);
  upcycle_model(dense, moe, o);
  checkpoint_write_model(out, moe, state);

  fmt::print("upcycled {} -> {}\n", ckpt, out);
  fmt::print("params total  {} -> {}\n", dense.layout.total, moe.layout.total);
  fmt::print("params active {} -> {} per token\n", active_params(dc), active_params(mc));
  for (int64_t l = 0; l < mc.num_hidden_layers; l++)
    fmt::print("layer {:<3} FFN params {} -> {}: {}\n", l, ffn_params(dense.layout, l),
               ffn_params(moe.layout, l), layer_summary(mc, o, l));
}

}  // namespace moelab
