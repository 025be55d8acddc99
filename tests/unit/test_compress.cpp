// moelab compress (DeRS compression of a trained MoE's experts): the experts come back from the
// stored base and deltas (every position at p = 0, full rank, half a step at 8 bits), checked
// here against the MoE's own tensors with a densification written independently of the
// library's; the compressed checkpoint loads and its logits match the MoE's at p = 0 / full rank
// and move away at p = 0.99 / 1 bit; byte counts follow their formulas; a dense base is the
// dense FFN, for MoE and MoE-CT experts; bad input is refused in one line with nothing written.
#include <gtest/gtest.h>

#include <fmt/format.h>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "convert/compress.hpp"
#include "model/delta.hpp"
#include "model/model.hpp"
#include "model_util.hpp"
#include "test_util.hpp"
#include "tiny_config.hpp"
#include "train/checkpoint.hpp"

using namespace moelab;
using namespace moelab::test;
namespace fs = std::filesystem;

namespace {

// tiny(true) with d = I = 8: every expert matrix ([8, 16] and [8, 8]) has full rank 8 <=
// min(d, I), so that lowrank:8 is exact.
ModelConfig small(bool moe) {
  ModelConfig c = tiny(moe);
  c.hidden_size = 8;
  c.intermediate_size = 8;
  return c;
}

std::string scratch(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("moelab_compress_" + name);
  fs::remove_all(p);
  return p.string();
}

// The routed weights of a model without ders: [E, in, out] with E > 1.
std::vector<const TensorView*> routed(const Model<float>& m) {
  std::vector<const TensorView*> r;
  for (const TensorView& t : m.layout.tensors)
    if (t.shape.size() == 3 && t.shape[0] > 1 && t.name.find("experts.") != std::string::npos &&
        !t.name.ends_with("_bias"))
      r.push_back(&t);
  return r;
}

// An MoE with distinct random experts (and every other tensor perturbed).
Model<float> trained_like(const ModelConfig& c, uint64_t seed) {
  Model<float> m(c, 2, 9);
  m.init_weights(seed);
  jitter(m, seed + 1);
  return m;
}

// The compressed model of `moe` (mean base) with `delta`.
Model<float> compressed(const Model<float>& moe, const std::string& delta, bool topk = false,
                        CompressReport* rep = nullptr) {
  DersConfig d = compress_parse_delta(delta);
  d.topk = topk;
  d.base = "mean";
  Model<float> out(compress_config(moe.cfg, d, "moe"), 2, 9);
  const CompressReport r = compress_model(moe, {}, out);
  if (rep) *rep = r;
  return out;
}

std::vector<float> mean_of(const Model<float>& m, const TensorView& t) {
  const int64_t E = t.shape[0], n = t.shape[1] * t.shape[2];
  std::vector<float> b(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; i++) {
    double s = 0;
    for (int64_t e = 0; e < E; e++) s += double(m.params[size_t(t.offset + e * n + i)]);
    b[size_t(i)] = float(s / double(E));
  }
  return b;
}

// max over experts of ||W_hat_e - W_e||_F / ||W_e||_F, W_hat from ders_expert.
double worst_rel_error(const Model<float>& moe, const Model<float>& out) {
  double worst = 0;
  for (const TensorView* t : routed(moe)) {
    const int64_t n = t->shape[1] * t->shape[2];
    for (int64_t e = 0; e < t->shape[0]; e++) {
      const std::vector<double> w = ders_expert(out, t->name, e);
      double d = 0, s = 0;
      for (int64_t i = 0; i < n; i++) {
        const double x = double(moe.params[size_t(t->offset + e * n + i)]);
        d += (w[size_t(i)] - x) * (w[size_t(i)] - x), s += x * x;
      }
      worst = std::max(worst, std::sqrt(d / s));
    }
  }
  return worst;
}

}  // namespace

// ----------------------------------------------------------------------------
// --delta

TEST(CompressParse, DeltaSpellings) {
  const DersConfig s = compress_parse_delta("sparse:0.9");
  EXPECT_EQ(s.delta, DeltaKind::Sparse);
  EXPECT_DOUBLE_EQ(s.p, 0.9);
  EXPECT_EQ(compress_parse_delta("sparse:0").p, 0.0);
  EXPECT_EQ(compress_parse_delta("quant:1").bits, 1);
  EXPECT_EQ(compress_parse_delta("quant:8").delta, DeltaKind::Quant);
  const DersConfig l = compress_parse_delta("lowrank:3");
  EXPECT_EQ(l.delta, DeltaKind::LowRank);
  EXPECT_EQ(l.rank, 3);
  EXPECT_EQ(l.scale(), 1.0);  // alpha 0: the SVD's factors as they are
  for (const char* bad : {"sparse:1", "sparse:-0.1", "sparse:nan", "sparse:inf",
                          "sparse:", "sparse", "sparse:0.5x", "quant:0", "quant:9", "quant:4.5",
                          "lowrank:0", "lowrank:-2", "lowrank:two", "dense:3", "", ":"}) {
    const std::string msg = error_of([&] { compress_parse_delta(bad); });
    EXPECT_NE(msg.find("--delta"), std::string::npos) << bad << ": " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

// ----------------------------------------------------------------------------
// round trips on the experts

TEST(Compress, SparseAtP0GivesBackTheExperts) {
  const Model<float> moe = trained_like(small(true), 3);
  for (bool topk : {false, true}) {
    CompressReport rep;
    const Model<float> out = compressed(moe, "sparse:0", topk, &rep);
    for (const TensorView* t : routed(moe)) {
      const int64_t n = t->shape[1] * t->shape[2];
      EXPECT_EQ(out.layout.find(t->name + "_delta_values")->shape[1], n);  // every position
      const std::vector<float> b = mean_of(moe, *t);
      for (int64_t e = 0; e < t->shape[0]; e++) {
        const std::vector<double> w = ders_expert(out, t->name, e);
        for (int64_t i = 0; i < n; i++) {
          const double x = moe.params[size_t(t->offset + e * n + i)];
          // base + float(W - base): one float rounding of the delta
          ASSERT_LE(std::abs(w[size_t(i)] - x), 0x1p-24 * std::abs(x - b[size_t(i)]))
              << t->name << " expert " << e << " element " << i;
        }
      }
    }
    EXPECT_LT(rep.total.err_max, 1e-7);
    EXPECT_NEAR(rep.total.err_max, worst_rel_error(moe, out), 1e-12);
  }
}

TEST(Compress, LowRankAtFullRankGivesBackTheExperts) {
  const Model<float> moe = trained_like(small(true), 4);
  CompressReport rep;
  const Model<float> out = compressed(moe, "lowrank:8", false, &rep);
  EXPECT_LT(worst_rel_error(moe, out), 1e-5);
  EXPECT_LT(rep.total.err_max, 1e-5);
  // a lower rank loses what its dropped singular values held
  CompressReport low;
  const Model<float> out2 = compressed(moe, "lowrank:2", false, &low);
  EXPECT_GT(worst_rel_error(moe, out2), 1e-2);
  EXPECT_NEAR(low.total.err_max, worst_rel_error(moe, out2), 1e-9);
}

TEST(Compress, QuantStaysWithinHalfAStepPerChannel) {
  const Model<float> moe = trained_like(small(true), 5);
  for (int64_t bits : {8, 4}) {
    const Model<float> out = compressed(moe, fmt::format("quant:{}", bits));
    const double bound = double((1 << (bits - 1)) - 1);
    for (const TensorView* t : routed(moe)) {
      const int64_t I = t->shape[1], O = t->shape[2], n = I * O;
      const std::vector<float> b = mean_of(moe, *t);
      const TensorView* sc = out.layout.find(t->name + "_delta_scales");
      for (int64_t e = 0; e < t->shape[0]; e++) {
        const float* W = moe.params.data() + t->offset + e * n;
        const std::vector<double> w = ders_expert(out, t->name, e);
        for (int64_t o = 0; o < O; o++) {
          // the scale: the channel's largest |delta| over the code bound
          double amax = 0;
          for (int64_t i = 0; i < I; i++)
            amax = std::max(amax, std::abs(double(W[i * O + o]) - double(b[size_t(i * O + o)])));
          const double s = out.params[size_t(sc->offset + e * O + o)];
          ASSERT_NEAR(s, amax / bound, 1e-6 * amax) << t->name;
          for (int64_t i = 0; i < I; i++)
            ASSERT_LE(std::abs(w[size_t(i * O + o)] - double(W[i * O + o])),
                      s / 2 * (1 + 1e-6) + 1e-7 * amax)
                << t->name << " bits " << bits;
        }
      }
    }
  }
}

TEST(Compress, RandomPositionsAreAFreshModelsAndValuesAreRescaled) {
  const Model<float> moe = trained_like(small(true), 6);
  DersConfig d = compress_parse_delta("sparse:0.75");
  d.seed = 11, d.base = "mean";
  const ModelConfig cfg = compress_config(moe.cfg, d, "moe");
  Model<float> out(cfg, 1, 4), fresh(cfg, 1, 4);
  compress_model(moe, {}, out);
  fresh.init_weights(2);
  EXPECT_TRUE(same_bits(out.index, fresh.index));  // the positions a model of this seed draws
  for (const TensorView* t : routed(moe)) {
    const int64_t n = t->shape[1] * t->shape[2];
    const TensorView* v = out.layout.find(t->name + "_delta_values");
    const IntTensor* p = out.layout.find_int(t->name + "_delta_indices");
    const int64_t nnz = v->shape[1];
    EXPECT_EQ(nnz, std::llround(0.25 * double(n)));
    const std::vector<float> b = mean_of(moe, *t);
    for (int64_t e = 0; e < t->shape[0]; e++)
      for (int64_t j = 0; j < nnz; j++) {
        const int32_t at = out.index[size_t(p->offset + e * nnz + j)];
        const double delta = double(moe.params[size_t(t->offset + e * n + at)]) - b[size_t(at)];
        // DARE: kept values times 1 / (1 - p)
        ASSERT_NEAR(out.params[size_t(v->offset + e * nnz + j)], delta / 0.25,
                    1e-6 * std::abs(delta / 0.25));
      }
  }
  d.seed = 12;
  Model<float> other(compress_config(moe.cfg, d, "moe"), 1, 4);
  compress_model(moe, {}, other);
  EXPECT_FALSE(same_bits(out.index, other.index));
}

TEST(Compress, TopkKeepsTheLargestDeltasUnscaled) {
  const Model<float> moe = trained_like(small(true), 7);
  const Model<float> out = compressed(moe, "sparse:0.75", true);
  for (const TensorView* t : routed(moe)) {
    const int64_t n = t->shape[1] * t->shape[2];
    const TensorView* v = out.layout.find(t->name + "_delta_values");
    const IntTensor* p = out.layout.find_int(t->name + "_delta_indices");
    const int64_t nnz = v->shape[1];
    const std::vector<float> b = mean_of(moe, *t);
    for (int64_t e = 0; e < t->shape[0]; e++) {
      std::vector<bool> kept(size_t(n), false);
      double min_kept = INFINITY, max_dropped = 0;
      for (int64_t j = 0; j < nnz; j++) {
        const int32_t at = out.index[size_t(p->offset + e * nnz + j)];
        kept[size_t(at)] = true;
        const float delta = float(double(moe.params[size_t(t->offset + e * n + at)]) - b[at]);
        ASSERT_EQ(out.params[size_t(v->offset + e * nnz + j)], delta);  // no rescale
        min_kept = std::min(min_kept, double(std::abs(delta)));
      }
      for (int64_t i = 0; i < n; i++)
        if (!kept[size_t(i)])
          max_dropped = std::max(
              max_dropped, std::abs(double(moe.params[size_t(t->offset + e * n + i)]) - b[i]));
      EXPECT_GE(min_kept, max_dropped) << t->name;
    }
  }
}

TEST(Compress, CosinesAreThoseOfTheExperts) {
  const Model<float> moe = trained_like(small(true), 8);
  CompressReport rep;
  const Model<float> out = compressed(moe, "sparse:0.5", false, &rep);
  const std::vector<const TensorView*> ts = routed(moe);
  ASSERT_EQ(rep.weights.size(), ts.size());
  for (size_t k = 0; k < ts.size(); k++) {
    const TensorView& t = *ts[k];
    const int64_t E = t.shape[0], n = t.shape[1] * t.shape[2];
    auto vec = [&](int64_t e) {
      return std::vector<double>(moe.params.begin() + t.offset + e * n,
                                 moe.params.begin() + t.offset + (e + 1) * n);
    };
    const std::vector<float> bf = mean_of(moe, t);
    const std::vector<double> b(bf.begin(), bf.end());
    auto cos = [](const std::vector<double>& x, const std::vector<double>& y) {
      return dot(x, y) / std::sqrt(dot(x, x) * dot(y, y));
    };
    double base_mean = 0, pair_min = 1;
    for (int64_t e = 0; e < E; e++) {
      base_mean += cos(vec(e), b) / double(E);
      for (int64_t f = e + 1; f < E; f++) pair_min = std::min(pair_min, cos(vec(e), vec(f)));
    }
    EXPECT_EQ(rep.weights[k].name, t.name);
    EXPECT_NEAR(rep.weights[k].cos_base_mean, base_mean, 1e-12);
    EXPECT_NEAR(rep.weights[k].cos_experts_min, pair_min, 1e-12);
    EXPECT_EQ(rep.weights[k].pairs, E * (E - 1) / 2);
  }
}

// ----------------------------------------------------------------------------
// checkpoints

namespace {

// Saves `m` as a checkpoint folder with a trainer state like a run's.
std::string save(const Model<float>& m, const std::string& name) {
  const std::string dir = scratch(name);
  checkpoint_write_model(dir, m,
                         {{"step", 40},
                          {"tokenizer_fingerprint", uint64_t(0xfeedbeef)},
                          {"loaders", {{"A", 3}}},
                          {"optimizer_step", 40}});
  return dir;
}

// Runs `ckpt`'s model from its own folder on a fixed batch; returns the logits.
std::vector<float> logits_from(const std::string& dir, const Batch& b) {
  const ModelConfig c = config_load(dir + "/config.json");
  Model<float> m(c, 2, 9);
  checkpoint_load(dir, m, nullptr);
  m.forward(b.tokens, b.targets);
  return logits_of(m);
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); i++) d = std::max(d, std::abs(double(a[i]) - double(b[i])));
  return d;
}

CompressOptions opts(const std::string& delta, const std::string& base = "mean") {
  CompressOptions o;
  o.ders = compress_parse_delta(delta);
  o.base = base;
  return o;
}

}  // namespace

// The bound: at p = 0 and full rank every expert is W within a float rounding or two (and
// full-rank SVD error ~1e-7), which moves logits of size ~1 by well under 1e-4.
TEST(CompressCheckpoint, LogitsMatchAtP0AndFullRankAndMoveWhenCompressedHard) {
  Model<float> moe = trained_like(small(true), 9);
  const std::string src = save(moe, "src");
  const Batch b = batch(2 * 9, moe.cfg.vocab_size, 5);
  moe.forward(b.tokens, b.targets);
  const std::vector<float> ref = logits_of(moe);
  std::map<std::string, double> diff;
  for (const char* delta :
       {"sparse:0", "lowrank:8", "quant:8", "sparse:0.99", "quant:1", "lowrank:1"}) {
    const std::string out = scratch(std::string("out_") + delta);
    compress_write(src, opts(delta), out);
    diff[delta] = max_abs_diff(logits_from(out, b), ref);
    // the trainer state: the source's tokenizer and step, no loaders or optimizer
    std::ifstream f(out + "/trainer_state.json");
    const nlohmann::json st = nlohmann::json::parse(f);
    EXPECT_EQ(st["tokenizer_fingerprint"], uint64_t(0xfeedbeef));
    EXPECT_EQ(st["step"], 40);
    EXPECT_FALSE(st.contains("loaders") || st.contains("optimizer_step"));
    EXPECT_EQ(st["compressed_from"], src);
    EXPECT_EQ(st["compress"]["delta"], delta);
    std::ifstream cj(out + "/compress.json");
    const nlohmann::json j = nlohmann::json::parse(cj);
    EXPECT_EQ(j["weights"].size(), 4u);
    EXPECT_GT(j["file_bytes_before"].get<int64_t>(), 0);
    fs::remove_all(out);
  }
  for (auto [k, v] : diff) std::printf("  %-12s max |logit diff| %.3g\n", k.c_str(), v);
  EXPECT_LT(diff["sparse:0"], 1e-4);
  EXPECT_LT(diff["lowrank:8"], 1e-4);
  EXPECT_LT(diff["quant:8"], diff["quant:1"]);
  for (const char* hard : {"sparse:0.99", "quant:1", "lowrank:1"}) {
    EXPECT_GT(diff[hard], 1e-2) << hard;
    EXPECT_GT(diff[hard], 100 * diff["sparse:0"]) << hard;
  }
  fs::remove_all(src);
}

TEST(CompressCheckpoint, ByteCountsFollowTheFormulas) {
  const Model<float> moe = trained_like(tiny(true), 10);  // d 16, I 8, E 4
  const std::string src = save(moe, "bytes_src");
  const int64_t E = 4;
  for (const char* delta : {"sparse:0.5", "quant:3", "lowrank:2"}) {
    const std::string out = scratch("bytes_out");
    const CompressReport r = compress_write(src, opts(delta), out);
    ASSERT_EQ(r.weights.size(), 4u);
    int64_t before = 0, after = 0;
    for (const CompressStats& s : r.weights) {
      const int64_t I = s.in, O = s.out, n = I * O;
      EXPECT_TRUE((I == 16 && O == 16) || (I == 8 && O == 16)) << s.name;
      EXPECT_EQ(s.experts, E);
      EXPECT_EQ(s.bytes_before, E * n * 4);
      int64_t want = n * 4;  // the base
      double paper = 0;
      if (delta[0] == 's') {
        want += E * std::llround(0.5 * double(n)) * (4 + 4);  // values and positions
        paper = (1 + E * 0.5) / double(E);
      } else if (delta[0] == 'q') {
        want += E * O * 4 + (E * n * 3 + 7) / 8;  // scales, packed 3-bit codes
        paper = (16.0 + E * 3) / (16.0 * E);
      } else {
        want += E * 2 * (I + O) * 4;  // A [2, in], B [out, 2]
        paper = (double(n) + E * 2 * (I + O)) / double(E * n);
      }
      EXPECT_EQ(s.bytes_after, want) << delta << " " << s.name;
      EXPECT_DOUBLE_EQ(s.paper_ratio, paper) << delta;
      before += s.bytes_before, after += s.bytes_after;
    }
    EXPECT_EQ(r.total.bytes_before, before);
    EXPECT_EQ(r.total.bytes_after, after);
    EXPECT_EQ(r.file_before, int64_t(fs::file_size(src + "/model.safetensors")));
    EXPECT_EQ(r.file_after, int64_t(fs::file_size(out + "/model.safetensors")));
    // the file shrinks by what the experts do, give or take the header's names
    EXPECT_NEAR(double(r.file_before - r.file_after), double(before - after), 2048.0) << delta;
    fs::remove_all(out);
  }
  fs::remove_all(src);
}

namespace {

// An MoE "upcycled" from `dense`: every expert its layer's FFN plus a small perturbation.
Model<float> upcycled_from(const Model<float>& dense, const ModelConfig& c, double noise) {
  Model<float> m = trained_like(c, 12);
  for (const TensorView* t : routed(m)) {
    std::string name = t->name;
    if (const size_t at = name.find("ct.experts."); at != std::string::npos) name.erase(at, 3);
    const TensorView* d = dense.layout.find(name);
    const int64_t n = t->shape[1] * t->shape[2];
    for (int64_t e = 0; e < t->shape[0]; e++)
      for (int64_t i = 0; i < n; i++)
        m.params[size_t(t->offset + e * n + i)] =
            dense.params[size_t(d->offset + i)] + float(noise * rng_normal(13, uint64_t(e), i));
  }
  return m;
}

}  // namespace

TEST(CompressCheckpoint, DenseBaseIsTheDenseFfn) {
  Model<float> dense = trained_like(small(false), 14);
  Model<float> moe = upcycled_from(dense, small(true), 1e-3);
  const std::string dsrc = save(dense, "dense"), src = save(moe, "up_src");
  const std::string out = scratch("up_out");
  const CompressReport r = compress_write(src, opts("sparse:0", dsrc), out);
  const ModelConfig c = config_load(out + "/config.json");
  EXPECT_EQ(c.ders.base, "dense");
  Model<float> back(c, 2, 9);
  checkpoint_load(out, back, nullptr);
  for (const TensorView* t : routed(moe)) {
    const TensorView *b = back.layout.find(t->name + "_base"), *d = dense.layout.find(t->name);
    ASSERT_EQ(d->shape, (std::vector<int64_t>{1, t->shape[1], t->shape[2]}));
    EXPECT_EQ(0, std::memcmp(back.params.data() + b->offset, dense.params.data() + d->offset,
                             size_t(d->numel) * sizeof(float)))
        << t->name;
  }
  EXPECT_LT(r.total.err_max, 1e-7);
  EXPECT_GT(r.total.cos_base_min, 0.999);  // upcycled experts stay near their FFN
  EXPECT_GT(r.total.cos_experts_min, 0.99);
  const Batch b = batch(2 * 9, moe.cfg.vocab_size, 5);
  moe.forward(b.tokens, b.targets);
  EXPECT_LT(max_abs_diff(logits_from(out, b), logits_of(moe)), 1e-4);
  for (const std::string& d : {dsrc, src, out}) fs::remove_all(d);
}

TEST(CompressCheckpoint, MoeCtExpertsCompressAgainstTheLayerFfn) {
  ModelConfig ct = small(false);
  ct.moe_ct.experts = 3;
  ct.moe_ct.top_k = 2;
  Model<float> dense = trained_like(small(false), 15);
  Model<float> moe = upcycled_from(dense, ct, 1e-2);
  const std::string dsrc = save(dense, "ct_dense"), src = save(moe, "ct_src");
  const std::string out = scratch("ct_out");
  const CompressReport r = compress_write(src, opts("sparse:0", dsrc), out);
  ASSERT_EQ(r.weights.size(), 4u);  // two layers' ct experts; the layer FFNs stay as they are
  for (const CompressStats& s : r.weights)
    EXPECT_NE(s.name.find(".mlp.ct.experts."), std::string::npos) << s.name;
  const ModelConfig c = config_load(out + "/config.json");
  Model<float> back(c, 2, 9);
  checkpoint_load(out, back, nullptr);
  const TensorView* b = back.layout.find("model.layers.1.mlp.ct.experts.down_proj_base");
  const TensorView* d = dense.layout.find("model.layers.1.mlp.experts.down_proj");
  ASSERT_TRUE(b && d);
  EXPECT_EQ(0, std::memcmp(back.params.data() + b->offset, dense.params.data() + d->offset,
                           size_t(d->numel) * sizeof(float)));
  EXPECT_GT(r.total.cos_base_min, 0.9);
  const Batch bt = batch(2 * 9, moe.cfg.vocab_size, 5);
  moe.forward(bt.tokens, bt.targets);
  EXPECT_LT(max_abs_diff(logits_from(out, bt), logits_of(moe)), 1e-4);
  for (const std::string& p : {dsrc, src, out}) fs::remove_all(p);
}

TEST(CompressCheckpoint, BadInputIsOneLineAndWritesNothing) {
  const Model<float> moe = trained_like(tiny(true), 16);  // d 16, I 8
  const std::string src = save(moe, "bad_src"),
                    dense = save(trained_like(tiny(false), 17), "bad_d");
  ModelConfig narrow = tiny(false);
  narrow.intermediate_size = 4;  // experts wider than this FFN, as from --granularity 2
  const std::string nd = save(trained_like(narrow, 18), "bad_narrow");
  const std::string done = scratch("bad_done"), empty = scratch("bad_empty");
  compress_write(src, opts("sparse:0.5"), done);
  fs::create_directories(empty);
  const std::string out = scratch("bad_out");
  CompressOptions sel = opts("quant:4");
  sel.select_given = true;
  const std::vector<std::tuple<std::string, CompressOptions, std::string, std::string>> cases = {
      {dense, opts("sparse:0.5"), out, "a dense model"},
      {done, opts("sparse:0.5"), out, "already compressed"},
      {src, opts("sparse:0.5"), done, "already exists"},
      {empty, opts("sparse:0.5"), out, "not a checkpoint"},
      {src + "_missing", opts("sparse:0.5"), out, "no such checkpoint folder"},
      {src, opts("lowrank:9"), out, "exceeds min(in, out) = 8"},
      {src, opts("sparse:0.5", nd), out, "is [1, 16, 8] in the dense checkpoint"},
      {src, opts("sparse:0.5", empty), out, "not a checkpoint folder"},
      {src, sel, out, "--select and --seed apply to --delta sparse:P only"},
  };
  for (const auto& [ckpt, o, to, want] : cases) {
    const std::string msg = error_of([&] { compress_write(ckpt, o, to); });
    EXPECT_NE(msg.find(want), std::string::npos) << "want '" << want << "', got '" << msg << "'";
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    if (to == out) {
      EXPECT_FALSE(fs::exists(out)) << want;
    }
    EXPECT_FALSE(fs::exists(fs::temp_directory_path() / ".moelab_compress_bad_out.tmp"));
  }
  // the shape message names the tensor and both shapes
  const std::string msg = error_of([&] { compress_write(src, opts("sparse:0.5", nd), out); });
  EXPECT_NE(msg.find("'model.layers.0.mlp.experts.gate_up_proj'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[16, 16]"), std::string::npos) << msg;
  for (const std::string& d : {src, dense, nd, done, empty}) fs::remove_all(d);
}
