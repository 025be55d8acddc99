#include "convert/compress.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <filesystem>
#include <set>

#include "convert/checkpoint.hpp"
#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/safetensors.hpp"
#include "kernels/parallel.hpp"
#include "model/delta.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ----------------------------------------------------------------------------
// options

DersConfig compress_parse_delta(std::string_view s) {
  DersConfig d;
  d.alpha = 0;  // low rank: B A as the SVD gives it, scale 1
  if (!ders_parse_spelling(s, d) || d.delta == DeltaKind::None)
    fail(
        fmt::format("--delta '{}': expected sparse:P (P in [0, 1), the share dropped), quant:BITS "
                    "(1..8) or lowrank:R (R >= 1)",
                    s));
  if (d.delta == DeltaKind::Sparse && !(std::isfinite(d.p) && d.p >= 0 && d.p < 1))
    fail(fmt::format("--delta {}: P (the share of each delta dropped) must be in [0, 1)", s));
  if (d.delta == DeltaKind::Quant && (d.bits < 1 || d.bits > 8))
    fail(fmt::format("--delta {}: BITS must be in 1..8", s));
  if (d.delta == DeltaKind::LowRank && d.rank < 1)
    fail(fmt::format("--delta {}: the rank R must be at least 1", s));
  return d;
}

ModelConfig compress_config(const ModelConfig& moe, const DersConfig& ders,
                            std::string_view source) {
  if (moe.num_local_experts <= 1 && moe.moe_ct.experts <= 1)
    fail(
        fmt::format("{}: a dense model (no routed experts: num_local_experts {}, moe_ct.experts "
                    "{}); compress needs an MoE",
                    source, moe.num_local_experts, moe.moe_ct.experts));
  if (moe.ders.on())
    fail(fmt::format(
        "{}: already compressed (its config has 'ders'); compress the MoE it came from", source));
  if (moe.lora.rank > 0)
    fail(fmt::format("{}: has LoRA adapters; merge them first (moelab export --merge-lora)",
                     source));
  const int64_t full = std::min(moe.hidden_size, moe.intermediate_size);
  if (ders.delta == DeltaKind::LowRank && ders.rank > full)
    fail(fmt::format("--delta lowrank:{}: R exceeds min(in, out) = {} of the expert matrices of {}",
                     ders.rank, full, source));
  ModelConfig c = moe;
  c.ders = ders;
  config_validate(c, source);
  return c;
}

// ----------------------------------------------------------------------------
// one routed weight

namespace {

// A routed weight: [E, in, out] in the MoE, NAME_base [in, out] and NAME_delta_* in the
// compressed model.
struct Routed {
  std::string name;
  const TensorView* from = nullptr;  // in the MoE
  const TensorView* base = nullptr;  // in the compressed model
  int64_t E = 0, in = 0, out = 0;
  int64_t n() const { return in * out; }
};

// Every routed weight of the compressed model (each with a base), in layout order.
std::vector<Routed> routed_weights(const Model<float>& moe, const Model<float>& out) {
  std::vector<Routed> rs;
  for (const TensorView& t : out.layout.tensors) {
    if (!t.name.ends_with("_base")) continue;
    Routed r{.name = t.name.substr(0, t.name.size() - 5), .base = &t};
    r.from = moe.layout.find(r.name);
    check(r.from && r.from->shape.size() == 3 && t.shape.size() == 2 &&
              r.from->shape[1] == t.shape[0] && r.from->shape[2] == t.shape[1],
          "compress: a base without its experts [E, in, out] in the MoE");
    r.E = r.from->shape[0], r.in = t.shape[0], r.out = t.shape[1];
    rs.push_back(r);
  }
  return rs;
}

// Is an MoE tensor a routed weight (the experts' matrices of an MoE or MoE-CT layer)?
bool is_routed(const TensorView& t) {
  return (t.name.ends_with("experts.gate_up_proj") || t.name.ends_with("experts.down_proj")) &&
         t.shape.size() == 3 && t.shape[0] > 1;
}

// base [in * out] = the experts' mean (in double).
std::vector<float> mean_base(const Model<float>& moe, const Routed& r) {
  const int64_t n = r.n();
  std::vector<double> acc(static_cast<size_t>(n), 0.0);  // [in * out]
  for (int64_t e = 0; e < r.E; e++) {
    const float* w = moe.params.data() + r.from->offset + e * n;
    for (int64_t i = 0; i < n; i++) acc[size_t(i)] += double(w[i]);
  }
  std::vector<float> base(static_cast<size_t>(n));  // [in * out]
  for (int64_t i = 0; i < n; i++) base[size_t(i)] = float(acc[size_t(i)] / double(r.E));
  return base;
}

// Expert e's sparse delta: positions drawn as a fresh model of this config draws them
// (ffn_init_positions: ders.seed, stream from the tensor's place), values rescaled by
// 1 / (1 - p) (DARE); or the top-k by magnitude, not rescaled.
void store_sparse(Model<float>& out, const Routed& r, int64_t e, std::span<const float> delta) {
  const DersConfig& ds = out.cfg.ders;
  const IntTensor* idx = out.layout.find_int(r.name + "_delta_indices");
  const TensorView* val = out.layout.find(r.name + "_delta_values");
  check(idx && val, "compress: sparse delta tensors missing");
  const int64_t nnz = val->shape[1];
  const uint64_t stream = (uint64_t(idx->offset) << 16) ^ uint64_t(e);
  const std::vector<int32_t> pos = ds.topk ? delta_topk_positions(delta, nnz)
                                           : delta_random_positions(ds.seed, stream, r.n(), nnz);
  const std::vector<float> v = delta_gather(delta, pos, ds.topk ? 1.0 : 1.0 / (1.0 - ds.p));
  std::copy(pos.begin(), pos.end(), out.index.begin() + idx->offset + e * nnz);
  std::copy(v.begin(), v.end(), out.params.begin() + val->offset + e * nnz);
}

void store_quant(Model<float>& out, const Routed& r, int64_t e, std::span<const float> delta) {
  const IntTensor* codes = out.layout.find_int(r.name + "_delta_codes");
  const TensorView* scales = out.layout.find(r.name + "_delta_scales");
  check(codes && scales, "compress: quantized delta tensors missing");
  const QuantDelta q = delta_quantize(delta, r.in, r.out, out.cfg.ders.bits);
  std::copy(q.codes.begin(), q.codes.end(), out.codes.begin() + codes->offset + e * r.n());
  std::copy(q.scales.begin(), q.scales.end(), out.params.begin() + scales->offset + e * r.out);
}

void store_lowrank(Model<float>& out, const Routed& r, int64_t e, std::span<const float> delta) {
  const DersConfig& ds = out.cfg.ders;
  const TensorView* A = out.layout.find(r.name + "_delta_A");
  const TensorView* B = out.layout.find(r.name + "_delta_B");
  check(A && B && ds.scale() == 1.0, "compress: low-rank delta tensors missing or scaled");
  const LowRankDelta lr = delta_lowrank(delta, r.in, r.out, ds.rank);
  std::copy(lr.A.begin(), lr.A.end(), out.params.begin() + A->offset + e * ds.rank * r.in);
  std::copy(lr.B.begin(), lr.B.end(), out.params.begin() + B->offset + e * r.out * ds.rank);
}

// delta_e = W_e - base [in, out], in double, rounded once.
void delta_of(const Model<float>& moe, const Routed& r, std::span<const float> base, int64_t e,
              std::vector<float>& delta) {
  const int64_t n = r.n();
  delta.resize(static_cast<size_t>(n));
  const float* w = moe.params.data() + r.from->offset + e * n;
  for (int64_t i = 0; i < n; i++) delta[size_t(i)] = float(double(w[i]) - double(base[i]));
}

// Low-rank: one SVD per expert, the experts in parallel. Each SVD then runs on one thread (the
// OpenMP OpenBLAS does inside a parallel region): at expert sizes LAPACK's level-2 steps gain
// little from threads, and contend badly with other processes; experts split evenly. Errors
// are carried out of the region and the first one rethrown.
void store_lowrank_all(const Model<float>& moe, const Routed& r, std::span<const float> base,
                       Model<float>& out) {
  std::vector<std::exception_ptr> errors(static_cast<size_t>(r.E));
  parallel_for(r.E, 1, true, [&](int64_t e) {
    try {
      std::vector<float> delta;
      delta_of(moe, r, base, e, delta);
      store_lowrank(out, r, e, delta);
    } catch (...) {
      errors[size_t(e)] = std::current_exception();
    }
  });
  for (const std::exception_ptr& err : errors) {
    if (err) std::rethrow_exception(err);
  }
}

// The base, then per expert delta_e = W_e - base stored light.
void store_weight(const Model<float>& moe, const Routed& r, std::span<const float> base,
                  Model<float>& out) {
  const int64_t n = r.n();
  check(int64_t(base.size()) == n, "compress: a base of the wrong size");
  std::copy(base.begin(), base.end(), out.params.begin() + r.base->offset);
  if (out.cfg.ders.delta == DeltaKind::LowRank) return store_lowrank_all(moe, r, base, out);
  std::vector<float> delta;  // [in, out]
  for (int64_t e = 0; e < r.E; e++) {
    delta_of(moe, r, base, e, delta);
    switch (out.cfg.ders.delta) {
      case DeltaKind::Sparse:
        store_sparse(out, r, e, delta);
        break;
      case DeltaKind::Quant:
        store_quant(out, r, e, delta);
        break;
      default:
        fail("compress: a delta kind without a store");
    }
  }
}

// ----------------------------------------------------------------------------
// measures

// W_hat_e [in * out] in double, from the compressed model's stored tensors, as the model
// computes it: base + values at their positions | scale[o] code[i, o] | scale B A.
std::vector<double> rebuilt(const Model<float>& m, const Routed& r, int64_t e) {
  const int64_t n = r.n(), I = r.in, O = r.out;
  const float* base = m.params.data() + r.base->offset;
  std::vector<double> w(base, base + n);  // [in, out]
  const DersConfig& ds = m.cfg.ders;
  if (ds.delta == DeltaKind::Sparse) {
    const TensorView* v = m.layout.find(r.name + "_delta_values");
    const IntTensor* p = m.layout.find_int(r.name + "_delta_indices");
    const int64_t nnz = v->shape[1];
    for (int64_t j = 0; j < nnz; j++)
      w[size_t(m.index[size_t(p->offset + e * nnz + j)])] +=
          double(m.params[size_t(v->offset + e * nnz + j)]);
  } else if (ds.delta == DeltaKind::Quant) {
    const IntTensor* q = m.layout.find_int(r.name + "_delta_codes");
    const float* s = m.params.data() + m.layout.find(r.name + "_delta_scales")->offset + e * O;
    for (int64_t i = 0; i < n; i++)
      w[size_t(i)] += double(s[i % O]) * double(m.codes[size_t(q->offset + e * n + i)]);
  } else {
    const int64_t R = ds.rank;
    const float* A = m.params.data() + m.layout.find(r.name + "_delta_A")->offset + e * R * I;
    const float* B = m.params.data() + m.layout.find(r.name + "_delta_B")->offset + e * O * R;
    for (int64_t i = 0; i < I; i++)
      for (int64_t o = 0; o < O; o++) {
        double acc = 0;
        for (int64_t k = 0; k < R; k++) acc += double(A[k * I + i]) * double(B[o * R + k]);
        w[size_t(i * O + o)] += ds.scale() * acc;
      }
  }
  return w;
}

// Bytes of one routed weight as the compressed checkpoint stores it: the base, then every
// NAME_delta_* tensor (floats and int32 positions 4 bytes each, codes packed to their width).
int64_t stored_bytes(const Model<float>& m, const Routed& r) {
  int64_t bytes = r.n() * 4;
  const std::string pre = r.name + "_delta_";
  for (const TensorView& t : m.layout.tensors)
    if (t.name.starts_with(pre)) bytes += t.numel * 4;
  for (const IntTensor& t : m.layout.ints)
    if (t.name.starts_with(pre)) bytes += t.bits == 32 ? t.numel * 4 : (t.numel * t.bound + 7) / 8;
  return bytes;
}

// The paper's count against the E experts replaced: values only (no positions), sparse
// (1 + E (1 - p)) in out; quantized, a 16-bit base plus BITS per delta element against a bf16
// MoE, (16 + E BITS) / (16 E); low rank, in out + E R (in + out).
double paper_ratio(const DersConfig& ds, const Routed& r) {
  const double E = double(r.E), n = double(r.n());
  if (ds.delta == DeltaKind::Sparse) return (1.0 + E * (1.0 - ds.p)) / E;
  if (ds.delta == DeltaKind::Quant) return (16.0 + E * double(ds.bits)) / (16.0 * E);
  return (n + E * double(ds.rank) * double(r.in + r.out)) / (E * n);
}

double cosine(double ab, double aa, double bb) {
  if (aa == 0 || bb == 0) return aa == bb ? 1.0 : 0.0;
  return ab / std::sqrt(aa * bb);
}

// Cosines of the experts to the base and between experts, from the Gram matrix of the E + 1
// vectors (experts, then base) in double.
void measure_cosines(const Model<float>& moe, const Model<float>& out, const Routed& r,
                     CompressStats& s) {
  const int64_t V = r.E + 1, n = r.n();
  auto vec = [&](int64_t a) {
    return a < r.E ? moe.params.data() + r.from->offset + a * n
                   : out.params.data() + r.base->offset;
  };
  std::vector<const float*> x(static_cast<size_t>(V));  // [V]
  for (int64_t a = 0; a < V; a++) x[size_t(a)] = vec(a);
  std::vector<double> G(size_t(V * V), 0.0);  // [V, V]
  out.device().ops<float>().gram(G.data(), x.data(), V, n);
  auto cos = [&](int64_t a, int64_t b) {
    return cosine(G[size_t(a * V + b)], G[size_t(a * V + a)], G[size_t(b * V + b)]);
  };
  s.cos_base_min = s.cos_experts_min = 1.0;
  for (int64_t e = 0; e < r.E; e++) {
    s.cos_base_mean += cos(e, r.E) / double(r.E);
    s.cos_base_min = std::min(s.cos_base_min, cos(e, r.E));
    for (int64_t f = e + 1; f < r.E; f++) {
      s.cos_experts_mean += cos(e, f);
      s.cos_experts_min = std::min(s.cos_experts_min, cos(e, f));
      s.pairs++;
    }
  }
  if (s.pairs > 0) s.cos_experts_mean /= double(s.pairs);
}

CompressStats measure(const Model<float>& moe, const Model<float>& out, const Routed& r) {
  CompressStats s{.name = r.name, .experts = r.E, .in = r.in, .out = r.out};
  s.bytes_before = r.E * r.n() * 4;
  s.bytes_after = stored_bytes(out, r);
  s.paper_ratio = paper_ratio(out.cfg.ders, r);
  for (int64_t e = 0; e < r.E; e++) {
    const std::vector<double> w_hat = rebuilt(out, r, e);
    const float* w = moe.params.data() + r.from->offset + e * r.n();
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < r.n(); i++) {
      const double d = w_hat[size_t(i)] - double(w[i]);
      diff += d * d, norm += double(w[i]) * double(w[i]);
    }
    const double err = norm > 0 ? std::sqrt(diff / norm) : (diff > 0 ? INFINITY : 0.0);
    s.err_mean += err / double(r.E);
    s.err_max = std::max(s.err_max, err);
  }
  measure_cosines(moe, out, r, s);
  return s;
}

// Bytes summed; the paper's ratio weighted by the bytes replaced; errors and cosines over all
// experts (and pairs) of every weight.
CompressStats total_of(const std::vector<CompressStats>& ws) {
  CompressStats t{.name = "total"};
  t.cos_base_min = t.cos_experts_min = 1.0;
  double paper = 0;
  for (const CompressStats& s : ws) {
    t.experts += s.experts, t.pairs += s.pairs;
    t.bytes_before += s.bytes_before, t.bytes_after += s.bytes_after;
    paper += s.paper_ratio * double(s.bytes_before);
    t.err_mean += s.err_mean * double(s.experts), t.err_max = std::max(t.err_max, s.err_max);
    t.cos_base_mean += s.cos_base_mean * double(s.experts);
    t.cos_base_min = std::min(t.cos_base_min, s.cos_base_min);
    t.cos_experts_mean += s.cos_experts_mean * double(s.pairs);
    t.cos_experts_min = std::min(t.cos_experts_min, s.cos_experts_min);
  }
  if (t.bytes_before > 0) t.paper_ratio = paper / double(t.bytes_before);
  if (t.experts > 0) t.err_mean /= double(t.experts), t.cos_base_mean /= double(t.experts);
  if (t.pairs > 0) t.cos_experts_mean /= double(t.pairs);
  return t;
}

}  // namespace

// ----------------------------------------------------------------------------
// compression

CompressBases compress_dense_bases(const std::string& dense, const Model<float>& moe) {
  const std::string file = (fs::path(dense) / "model.safetensors").string();
  std::error_code ec;
  if (!fs::is_directory(dense, ec) || !fs::exists(file, ec))
    fail(fmt::format("--base {}: not a checkpoint folder (no model.safetensors)", dense));
  const auto tensors = safetensors_read(file);
  CompressBases bases;
  for (const TensorView& t : moe.layout.tensors) {
    if (!is_routed(t)) continue;
    // MoE-CT experts sit beside the layer's FFN: their dense FFN is the layer's
    std::string name = t.name;
    if (const size_t at = name.find("mlp.ct.experts."); at != name.npos) name.erase(at + 4, 3);
    const std::vector<int64_t> want = {1, t.shape[1], t.shape[2]};
    auto it = tensors.find(name);
    if (it == tensors.end())
      fail(fmt::format("--base {}: no tensor '{}' (the dense FFN of '{}' [{}, {}])", dense, name,
                       t.name, t.shape[1], t.shape[2]));
    if (it->second.shape != want || it->second.dtype != DType::F32)
      fail(fmt::format(
          "--base {}: tensor '{}' is [{}] in the dense checkpoint but the experts of '{}' are "
          "[{}, {}] (experts narrower than the FFN, as from --granularity > 1, need --base mean)",
          dense, name, fmt::join(it->second.shape, ", "), t.name, t.shape[1], t.shape[2]));
    const auto v = it->second.as<float>();
    bases[t.name].assign(v.begin(), v.end());
  }
  return bases;
}

CompressReport compress_model(const Model<float>& moe, const CompressBases& bases,
                              Model<float>& out) {
  check(out.cfg.ders.on() && !moe.cfg.ders.on(), "compress_model: from an MoE to a DeRS model");
  std::set<std::string> filled;
  for (const TensorView& t : out.layout.tensors)
    if (const TensorView* f = moe.layout.find(t.name)) {
      check(f->shape == t.shape, "compress_model: a shared tensor changed shape");
      std::copy_n(moe.params.begin() + f->offset, t.numel, out.params.begin() + t.offset);
      filled.insert(t.name);
    }
  CompressReport rep;
  for (const Routed& r : routed_weights(moe, out)) {
    if (bases.empty()) {
      store_weight(moe, r, mean_base(moe, r), out);
    } else {
      auto it = bases.find(r.name);
      check(it != bases.end(), "compress_model: no base for a routed weight");
      store_weight(moe, r, it->second, out);
    }
    for (const TensorView& t : out.layout.tensors)
      if (t.name.starts_with(r.name + "_")) filled.insert(t.name);
    rep.weights.push_back(measure(moe, out, r));
  }
  for (const TensorView& t : out.layout.tensors)
    if (!filled.contains(t.name))
      fail(fmt::format("compress: tensor '{}' of the compressed model has no source", t.name));
  rep.total = total_of(rep.weights);
  return rep;
}

namespace {

json options_json(const CompressOptions& o, const DersConfig& d) {
  json j = {{"delta", ders_spelling(d)}, {"base", d.base}};
  if (d.base == "dense") j["base_checkpoint"] = o.base;
  if (d.delta == DeltaKind::Sparse)
    j.update({{"select", d.topk ? "topk" : "random"}, {"seed", d.seed}});
  return j;
}

}  // namespace

CompressReport compress_write(const std::string& ckpt, const CompressOptions& o,
                              const std::string& out) {
  std::error_code ec;
  if (fs::exists(out, ec) || fs::is_symlink(out, ec))
    fail(fmt::format("--out {}: already exists (compress never replaces a folder)", out));
  if (!fs::is_directory(ckpt, ec)) fail(fmt::format("{}: no such checkpoint folder", ckpt));
  const std::string config_path = (fs::path(ckpt) / "config.json").string();
  if (!fs::exists(config_path, ec))
    fail(fmt::format("{}: not a checkpoint (no config.json)", ckpt));
  DersConfig ders = o.ders;
  ders.base = o.base == "mean" ? "mean" : "dense";
  if (o.select_given && ders.delta != DeltaKind::Sparse)
    fail(fmt::format("--select and --seed apply to --delta sparse:P only (not {})",
                     ders_spelling(ders)));
  const ModelConfig moe_cfg = config_load(config_path);
  const ModelConfig cfg = compress_config(moe_cfg, ders, ckpt);
  Model<float> moe(moe_cfg, 1, 1);
  json state = checkpoint_load_model(ckpt, moe);
  const CompressBases bases =
      ders.base == "dense" ? compress_dense_bases(o.base, moe) : CompressBases{};
  Model<float> small(cfg, 1, 1);
  CompressReport rep = compress_model(moe, bases, small);
  for (const char* key : {"loaders", "optimizer_step", "optimizer_moments"}) state.erase(key);
  state["compressed_from"] = ckpt;
  state["compress"] = options_json(o, ders);
  // The checkpoint and compress.json are written whole into a hidden folder beside OUT, which is
  // then renamed: OUT appears with every file or not at all (a compression stopped between the
  // two leaves no OUT without its compress.json).
  fs::path dst = fs::path(out).lexically_normal();
  if (!dst.has_filename()) dst = dst.parent_path();  // "DIR/"
  const fs::path parent = dst.has_parent_path() ? dst.parent_path() : fs::path(".");
  const std::string staging =
      (parent / fmt::format(".{}.compress", dst.filename().string())).string();
  fs::remove_all(staging, ec);
  try {
    checkpoint_write_model(staging, small, state);
    rep.file_before = int64_t(fs::file_size(fs::path(ckpt) / "model.safetensors"));
    rep.file_after = int64_t(fs::file_size(fs::path(staging) / "model.safetensors"));
    nlohmann::ordered_json j = {{"checkpoint", ckpt}, {"out", out}};
    j["options"] = options_json(o, ders);
    j.update(compress_report_json(rep));
    file_write_synced((fs::path(staging) / "compress.json").string(), j.dump(2) + "\n");
    file_fsync(staging);
    fs::rename(staging, dst, ec);
    if (ec)
      fail(fmt::format("--out {}: cannot rename the written folder into place ({})", out,
                       ec.message()));
    file_fsync_parent(dst.string());
  } catch (const Error& e) {
    fs::remove_all(staging, ec);
    std::string msg = e.what();  // named as the caller named it
    if (const size_t at = msg.find(staging); at != std::string::npos)
      msg.replace(at, staging.size(), out);
    fail(msg);
  } catch (...) {
    fs::remove_all(staging, ec);
    throw;
  }
  return rep;
}

// ----------------------------------------------------------------------------
// report

namespace {

nlohmann::ordered_json stats_json(const CompressStats& s) {
  return {{"name", s.name},
          {"experts", s.experts},
          {"in", s.in},
          {"out", s.out},
          {"bytes_before", s.bytes_before},
          {"bytes_after", s.bytes_after},
          {"ratio", s.bytes_before > 0 ? double(s.bytes_after) / double(s.bytes_before) : 0.0},
          {"paper_ratio", s.paper_ratio},
          {"rel_error_mean", s.err_mean},
          {"rel_error_max", s.err_max},
          {"cos_base_mean", s.cos_base_mean},
          {"cos_base_min", s.cos_base_min},
          {"cos_experts_mean", s.cos_experts_mean},
          {"cos_experts_min", s.cos_experts_min},
          {"expert_pairs", s.pairs}};
}

std::string human_bytes(double b) {
  if (b >= 1 << 30) return fmt::format("{:.2f} GiB", b / double(1 << 30));
  if (b >= 1 << 20) return fmt::format("{:.2f} MiB", b / double(1 << 20));
  if (b >= 1 << 10) return fmt::format("{:.1f} KiB", b / double(1 << 10));
  return fmt::format("{:.0f} B", b);
}

std::string stats_row(const CompressStats& s, size_t width) {
  const std::string shape = s.in > 0 ? fmt::format("{}x{}", s.in, s.out) : "";
  return fmt::format(
      "{:<{}}  {:>3}  {:>9}  {:>10}  {:>10}  {:>6.3f}  {:>6.3f}  {:>9.2e}  {:>9.2e}  {:>16}  "
      "{:>16}\n",
      s.name, width, s.experts, shape, human_bytes(double(s.bytes_before)),
      human_bytes(double(s.bytes_after)),
      double(s.bytes_after) / double(std::max<int64_t>(1, s.bytes_before)), s.paper_ratio,
      s.err_mean, s.err_max, fmt::format("{:.4f}/{:.4f}", s.cos_base_mean, s.cos_base_min),
      fmt::format("{:.4f}/{:.4f}", s.cos_experts_mean, s.cos_experts_min));
}

}  // namespace

nlohmann::ordered_json compress_report_json(const CompressReport& r) {
  nlohmann::ordered_json j;
  j["weights"] = nlohmann::ordered_json::array();
  for (const CompressStats& s : r.weights) j["weights"].push_back(stats_json(s));
  j["total"] = stats_json(r.total);
  j["file_bytes_before"] = r.file_before;
  j["file_bytes_after"] = r.file_after;
  return j;
}

std::string compress_table(const CompressReport& r) {
  size_t width = 6;
  for (const CompressStats& s : r.weights) width = std::max(width, s.name.size());
  std::string t = fmt::format(
      "{:<{}}  {:>3}  {:>9}  {:>10}  {:>10}  {:>6}  {:>6}  {:>9}  {:>9}  {:>16}  {:>16}\n",
      "weight", width, "E", "in x out", "before", "after", "ratio", "paper", "err mean", "err max",
      "cos base avg/min", "cos exp avg/min");
  for (const CompressStats& s : r.weights) t += stats_row(s, width);
  t += stats_row(r.total, width);
  if (r.file_before > 0)
    t += fmt::format("model.safetensors: {} -> {} ({:.3f})\n", human_bytes(double(r.file_before)),
                     human_bytes(double(r.file_after)),
                     double(r.file_after) / double(r.file_before));
  return t;
}

}  // namespace moelab
