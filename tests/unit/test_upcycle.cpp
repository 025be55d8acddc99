// Upcycling: the MoE model made from a dense one computes the dense function at step 0 (logits
// against the dense model's forward on the same batch), its experts are copies or slices of the
// FFN tensor by tensor, and bad options are refused in one line naming the flag.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "convert/upcycle.hpp"
#include "model/model.hpp"
#include "model_util.hpp"
#include "test_util.hpp"
#include "tiny_config.hpp"

using namespace moelab;
using namespace moelab::test;

namespace {

constexpr int64_t kB = 3, kT = 13;

UpcycleOptions opts(int64_t N, int64_t K, int64_t G = 1, std::string layers = "all") {
  UpcycleOptions o;
  o.experts = N, o.top_k = K, o.granularity = G, o.layers = std::move(layers), o.seed = 11;
  return o;
}

// The tiny dense model with every tensor perturbed (biases and norms too, so that their copies
// matter).
template <typename T>
Model<T> dense_model() {
  Model<T> d(tiny(false), kB, kT);
  d.init_weights(1);
  jitter(d, 2);
  return d;
}

struct Compared {
  double max_diff = 0, max_logit = 0;
  bool bitwise = false;
  std::vector<std::vector<double>> load;  // the upcycled model's expert load per layer
};

// Logits of the dense model and of its upcycled copy on the same batch.
template <typename T>
Compared compare(const UpcycleOptions& o) {
  Model<T> dense = dense_model<T>();
  Model<T> moe(upcycle_config(dense.cfg, o, "test"), kB, kT);
  upcycle_model(dense, moe, o);
  const Batch b = batch(kB * kT, dense.cfg.vocab_size, 5);
  dense.forward(b.tokens, b.targets);
  moe.forward(b.tokens, b.targets);
  const std::vector<T> a = logits_of(dense), m = logits_of(moe);
  Compared c;
  c.bitwise = same_bits(a, m);
  for (size_t i = 0; i < a.size(); i++) {
    c.max_diff = std::max(c.max_diff, std::abs(double(a[i]) - double(m[i])));
    c.max_logit = std::max(c.max_logit, std::abs(double(a[i])));
  }
  c.load = moe.expert_load();
  return c;
}

// Routing that is not trivial: in every routed layer more than K of the experts get tokens.
void expect_spread(const Compared& c, int64_t K) {
  for (const auto& layer : c.load) {
    if (layer.size() <= 1) continue;
    const auto used = std::count_if(layer.begin(), layer.end(), [](double f) { return f > 0; });
    EXPECT_GT(used, K) << "the router sends every token to the same experts";
  }
}

struct Case {
  const char* name;
  UpcycleOptions o;
};
void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name;
}

std::vector<Case> cases() {
  std::vector<Case> v = {{"top2", opts(4, 2)},
                         {"granularity2", opts(4, 2, 2)},
                         {"granularity4_top1", opts(3, 1, 4)},
                         {"every_other", opts(4, 2, 1, "every-other")},
                         {"layer0_top1", opts(4, 1, 1, "0")}};
  UpcycleOptions u = opts(3, 2);
  u.universal_ffn = true;
  v.push_back({"universal_ffn", u});
  UpcycleOptions s = opts(4, 2);
  s.ders = upcycle_parse_delta("sparse:0.9");
  v.push_back({"sparse_delta", s});
  UpcycleOptions r = opts(4, 2);
  r.ders = upcycle_parse_delta("lowrank:2");
  v.push_back({"lowrank_delta", r});
  UpcycleOptions r1 = opts(4, 1);
  r1.ders = upcycle_parse_delta("lowrank:3");
  v.push_back({"lowrank_delta_top1", r1});
  return v;
}

}  // namespace

// ----------------------------------------------------------------------------
// step 0: the dense function

// Top-1, whole copies: the router's weight is exp(0) / exp(0) = 1 exactly and the combine
// multiplies by it, and each token's row goes through the same GEMM as in the dense model (a
// row of the output depends only on that row of the input and the weights), so the logits are
// the dense ones bit for bit.
TEST(Upcycle, TopOneCopiesAreBitForBitDense) {
  const Compared f = compare<float>(opts(4, 1));
  EXPECT_TRUE(f.bitwise) << "float: max |diff| " << f.max_diff;
  expect_spread(f, 1);
  const Compared d = compare<double>(opts(4, 1));
  EXPECT_TRUE(d.bitwise) << "double: max |diff| " << d.max_diff;
}

class UpcycleStepZero : public ::testing::TestWithParam<Case> {};

// With k > 1 the routing weights sum to 1 up to rounding (w1 + w2 = 1 - eps), with G > 1 a
// group's slices are added in another order than the dense GEMM sums the hidden units: the
// logits (|logit| up to about 5 here) agree to 1e-5 in float and 1e-12 in double.
TEST_P(UpcycleStepZero, LogitsEqualTheDenseModels) {
  const Case& k = GetParam();
  const Compared f = compare<float>(k.o);
  EXPECT_LE(f.max_diff, 1e-5) << k.name << " float (max |logit| " << f.max_logit << ")";
  EXPECT_GT(f.max_logit, 0.5) << "logits too small for the comparison to mean anything";
  expect_spread(f, k.o.top_k * k.o.granularity);
  const Compared d = compare<double>(k.o);
  EXPECT_LE(d.max_diff, 1e-12) << k.name << " double";
  std::printf("[ upcycle  ] %-20s max |logit diff| float %.3g, double %.3g (max |logit| %.3g)\n",
              k.name, f.max_diff, d.max_diff, f.max_logit);
}

INSTANTIATE_TEST_SUITE_P(Variants, UpcycleStepZero, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return std::string(info.param.name); });

// The comparison above can fail: an upcycled model whose down projections miss the factor G
// (each slice at w/G) computes half the FFN, and a different dense model differs.
TEST(Upcycle, StepZeroComparisonSeesAWrongUpcycle) {
  const UpcycleOptions o = opts(4, 2, 2);
  Model<double> dense = dense_model<double>();
  Model<double> moe(upcycle_config(dense.cfg, o, "test"), kB, kT);
  upcycle_model(dense, moe, o);
  for (const FfnParams& f : moe.blocks().ffn)
    for (int64_t i = 0; i < f.down.experts * f.down.in * f.down.out; i++)
      moe.params[size_t(f.down.w + i)] /= 2;
  const Batch b = batch(kB * kT, dense.cfg.vocab_size, 5);
  dense.forward(b.tokens, b.targets);
  moe.forward(b.tokens, b.targets);
  const std::vector<double> a = logits_of(dense), m = logits_of(moe);
  double diff = 0;
  for (size_t i = 0; i < a.size(); i++) diff = std::max(diff, std::abs(a[i] - m[i]));
  EXPECT_GT(diff, 1e-3);
}

// ----------------------------------------------------------------------------
// tensors

namespace {

const std::vector<double>& P(const Model<double>& m) {
  return m.params;
}

double at(const Model<double>& m, const std::string& name, int64_t i) {
  const TensorView* t = m.layout.find(name);
  EXPECT_NE(t, nullptr) << name;
  return t ? P(m)[size_t(t->offset + i)] : std::numeric_limits<double>::quiet_NaN();
}

}  // namespace

// Expert e of a layer is hidden-unit slice s = e mod G: unit j' of the expert is unit
// s I' + j' of the FFN, its gate column 2j' and linear column 2j'+1 are the FFN's columns
// 2(s I' + j') and 2(s I' + j') + 1; its down row j' is 2x the FFN's row s I' + j' (G = 2).
TEST(Upcycle, ExpertsAreSlicesOfTheFfnAndGroupRoutersTie) {
  const int64_t N = 3, G = 2;
  const UpcycleOptions o = opts(N, 1, G);
  const Model<double> dense = dense_model<double>();
  Model<double> moe(upcycle_config(dense.cfg, o, "test"), kB, kT);
  upcycle_model(dense, moe, o);
  const int64_t d = dense.cfg.hidden_size, I = dense.cfg.intermediate_size, Is = I / G;
  ASSERT_EQ(moe.cfg.num_local_experts, N * G);
  ASSERT_EQ(moe.cfg.num_experts_per_tok, G);
  ASSERT_EQ(moe.cfg.intermediate_size, Is);
  for (int64_t l = 0; l < dense.cfg.num_hidden_layers; l++) {
    const std::string dp = fmt::format("model.layers.{}.mlp.experts.", l);
    const std::string& mp = dp;  // the same names, other shapes
    const std::string router = fmt::format("model.layers.{}.mlp.router.", l);
    for (int64_t e = 0; e < N * G; e++) {
      const int64_t s = e % G;
      for (int64_t jp = 0; jp < Is; jp++) {
        const int64_t j = s * Is + jp;
        for (int64_t t = 0; t < 2; t++) {
          for (int64_t i = 0; i < d; i++)
            ASSERT_EQ(at(moe, mp + "gate_up_proj", (e * d + i) * 2 * Is + 2 * jp + t),
                      at(dense, dp + "gate_up_proj", i * 2 * I + 2 * j + t));
          ASSERT_EQ(at(moe, mp + "gate_up_proj_bias", e * 2 * Is + 2 * jp + t),
                    at(dense, dp + "gate_up_proj_bias", 2 * j + t));
        }
        for (int64_t c = 0; c < d; c++)
          ASSERT_EQ(at(moe, mp + "down_proj", (e * Is + jp) * d + c),
                    2.0 * at(dense, dp + "down_proj", j * d + c));
      }
      for (int64_t c = 0; c < d; c++) {
        ASSERT_EQ(at(moe, mp + "down_proj_bias", e * d + c), at(dense, dp + "down_proj_bias", c));
        if (s != 0) {  // the group's rows tie with its first
          ASSERT_EQ(at(moe, router + "weight", e * d + c),
                    at(moe, router + "weight", (e - s) * d + c));
        }
      }
      EXPECT_EQ(at(moe, router + "bias", e), 0.0);
    }
    // groups differ: rows of experts 0 and G are not the same
    bool differ = false;
    for (int64_t c = 0; c < d; c++)
      differ = differ || at(moe, router + "weight", c) != at(moe, router + "weight", G * d + c);
    EXPECT_TRUE(differ) << "layer " << l << ": the groups' router rows are equal";
  }
  // everything outside the FFNs is the dense model's
  for (const TensorView& t : dense.layout.tensors) {
    if (t.name.find(".mlp.experts.") != std::string::npos) continue;
    const TensorView* u = moe.layout.find(t.name);
    ASSERT_NE(u, nullptr) << t.name;
    ASSERT_EQ(u->shape, t.shape) << t.name;
    EXPECT_TRUE(std::equal(P(dense).begin() + t.offset, P(dense).begin() + t.offset + t.numel,
                           P(moe).begin() + u->offset))
        << t.name;
  }
}

// every-other on two layers: layer 1 is routed, layer 0 keeps the dense FFN [1, ...] as it was.
TEST(Upcycle, LayersLeftDenseKeepTheirFfn) {
  const UpcycleOptions o = opts(4, 2, 1, "every-other");
  const Model<double> dense = dense_model<double>();
  Model<double> moe(upcycle_config(dense.cfg, o, "test"), kB, kT);
  upcycle_model(dense, moe, o);
  EXPECT_EQ(moe.cfg.moe_layers, std::vector<int64_t>{1});
  EXPECT_EQ(moe.layout.find("model.layers.0.mlp.router.weight"), nullptr);
  ASSERT_NE(moe.layout.find("model.layers.1.mlp.router.weight"), nullptr);
  const std::string up0 = "model.layers.0.mlp.experts.gate_up_proj";
  EXPECT_EQ(moe.layout.find(up0)->shape, dense.layout.find(up0)->shape);
  const TensorView* t = dense.layout.find(up0);
  for (int64_t i = 0; i < t->numel; i++) ASSERT_EQ(at(moe, up0, i), at(dense, up0, i));
  // layer 1's four experts: copies
  const std::string up1 = "model.layers.1.mlp.experts.gate_up_proj";
  const int64_t n = dense.layout.find(up1)->numel;
  for (int64_t e = 0; e < 4; e++)
    for (int64_t i = 0; i < n; i++) ASSERT_EQ(at(moe, up1, e * n + i), at(dense, up1, i));
}

// DeRS: the base is the FFN's matrix, the sparse deltas are zero at distinct random positions
// per expert (from the seed), the low-rank deltas have random A and zero B.
TEST(Upcycle, DersBaseIsTheFfnAndDeltasStartAtZero) {
  const Model<double> dense = dense_model<double>();
  UpcycleOptions o = opts(4, 2);
  o.ders = upcycle_parse_delta("sparse:0.75");
  Model<double> sm(upcycle_config(dense.cfg, o, "test"), kB, kT);
  upcycle_model(dense, sm, o);
  EXPECT_EQ(sm.cfg.ders.seed, o.seed);
  const std::string pre = "model.layers.0.mlp.experts.";
  for (const char* w : {"gate_up_proj", "down_proj"}) {
    const TensorView* b = sm.layout.find(pre + w + "_base");
    ASSERT_NE(b, nullptr);
    for (int64_t i = 0; i < b->numel; i++)
      ASSERT_EQ(at(sm, pre + w + "_base", i), at(dense, pre + w, i)) << w;
    const TensorView* v = sm.layout.find(pre + w + "_delta_values");
    ASSERT_NE(v, nullptr);
    EXPECT_TRUE(std::all_of(P(sm).begin() + v->offset, P(sm).begin() + v->offset + v->numel,
                            [](double x) { return x == 0; }));
    const IntTensor* ix = sm.layout.find_int(pre + w + "_delta_indices");
    ASSERT_NE(ix, nullptr);
    const int64_t nnz = ix->shape[1];
    EXPECT_EQ(nnz, b->numel / 4);
    std::set<std::vector<int32_t>> per_expert;
    for (int64_t e = 0; e < 4; e++)
      per_expert.insert(
          {sm.index.begin() + ix->offset + e * nnz, sm.index.begin() + ix->offset + (e + 1) * nnz});
    EXPECT_EQ(per_expert.size(), 4u) << "every expert its own positions";
  }
  EXPECT_EQ(at(sm, pre + "down_proj_bias", 3 * 16 + 5), at(dense, pre + "down_proj_bias", 5));

  o.ders = upcycle_parse_delta("lowrank:2");
  Model<double> lm(upcycle_config(dense.cfg, o, "test"), kB, kT);
  upcycle_model(dense, lm, o);
  for (const char* w : {"gate_up_proj", "down_proj"}) {
    const TensorView *A = lm.layout.find(pre + w + "_delta_A"),
                     *B = lm.layout.find(pre + w + "_delta_B");
    ASSERT_TRUE(A && B);
    EXPECT_EQ(A->shape[1], 2);
    EXPECT_TRUE(std::all_of(P(lm).begin() + B->offset, P(lm).begin() + B->offset + B->numel,
                            [](double x) { return x == 0; }));
    EXPECT_TRUE(std::any_of(P(lm).begin() + A->offset, P(lm).begin() + A->offset + A->numel,
                            [](double x) { return x != 0; }));
  }
}

// --universal-ffn: the FFN stays and MoE-CT's experts copy it, behind a fixed gate of 0.5.
TEST(Upcycle, UniversalFfnKeepsTheFfnBesideCopies) {
  const Model<double> dense = dense_model<double>();
  UpcycleOptions o = opts(3, 2, 1, "1");
  o.universal_ffn = true;
  Model<double> m(upcycle_config(dense.cfg, o, "test"), kB, kT);
  upcycle_model(dense, m, o);
  EXPECT_FALSE(m.cfg.is_moe());
  EXPECT_EQ(m.cfg.moe_ct.experts, 3);
  EXPECT_EQ(m.cfg.moe_ct.top_k, 2);
  EXPECT_EQ(m.cfg.moe_ct.gate, CtGate::Fixed);
  EXPECT_EQ(m.cfg.moe_ct.lambda, 0.5);
  EXPECT_EQ(m.cfg.moe_ct.layers, std::vector<int64_t>{1});
  EXPECT_EQ(m.layout.find("model.layers.0.mlp.ct.router.weight"), nullptr);
  const std::string up = "model.layers.1.mlp.experts.gate_up_proj";
  const std::string ct = "model.layers.1.mlp.ct.experts.gate_up_proj";
  const int64_t n = dense.layout.find(up)->numel;
  for (int64_t e = 0; e < 3; e++)
    for (int64_t i = 0; i < n; i++) ASSERT_EQ(at(m, ct, e * n + i), at(dense, up, i));
  for (int64_t i = 0; i < n; i++) ASSERT_EQ(at(m, up, i), at(dense, up, i));
}

// ----------------------------------------------------------------------------
// refusals: one line naming the flag (or the source)

TEST(Upcycle, BadOptionsAreRefusedNamingTheFlag) {
  const ModelConfig dc = tiny(false);  // d 16, I 8, 2 layers
  auto err = [&](UpcycleOptions o) {
    return error_of([&] { (void)upcycle_config(dc, o, "ckpt"); });
  };
  auto with = [](UpcycleOptions o, auto f) {
    f(o);
    return o;
  };
  EXPECT_NE(err(opts(1, 1)).find("--experts"), std::string::npos);
  EXPECT_NE(err(opts(4, 0)).find("--top-k"), std::string::npos);
  EXPECT_NE(err(opts(4, 5)).find("--top-k"), std::string::npos);
  EXPECT_NE(err(opts(4, 1, 0)).find("--granularity"), std::string::npos);
  EXPECT_NE(err(opts(4, 1, 3)).find("--granularity 3: does not divide"), std::string::npos);
  EXPECT_NE(err(opts(4, 1, 2, "1")).find("--granularity"), std::string::npos);
  EXPECT_EQ(err(opts(4, 1, 2, "1,0")), "");  // every layer, listed
  for (const char* bad : {"2", "-1", "1,x", "", "1,", "0,0", "every_other"})
    EXPECT_NE(err(opts(4, 1, 1, bad)).find("--layers"), std::string::npos) << bad;
  EXPECT_NE(err(with(opts(4, 1, 2), [](auto& o) { o.universal_ffn = true; })).find("--granularity"),
            std::string::npos);
  const DersConfig sp = upcycle_parse_delta("sparse:0.5");
  EXPECT_NE(err(with(opts(4, 1, 2), [&](auto& o) { o.ders = sp; })).find("--delta"),
            std::string::npos);
  EXPECT_NE(
      err(with(opts(4, 1), [&](auto& o) { o.ders = sp, o.universal_ffn = true; })).find("--delta"),
      std::string::npos);
  for (const char* bad : {"sparse:1", "sparse:-0.1", "lowrank:0", "lowrank:9"})
    EXPECT_NE(
        err(with(opts(4, 1), [&](auto& o) { o.ders = upcycle_parse_delta(bad); })).find("--delta"),
        std::string::npos)
        << bad;
  for (const char* bad : {"sparse", "sparse:", "sparse:x", "lowrank:2.5", "quant:4", "dense"})
    EXPECT_NE(error_of([&] { (void)upcycle_parse_delta(bad); }).find("--delta"), std::string::npos)
        << bad;
  // a one-layer model has no odd layer
  ModelConfig one = dc;
  one.num_hidden_layers = 1, one.layer_sliding = {true};
  EXPECT_NE(error_of([&] {
              (void)upcycle_config(one, opts(4, 1, 1, "every-other"), "c");
            }).find("--layers every-other"),
            std::string::npos);
  // an MoE source
  EXPECT_EQ(error_of([&] { (void)upcycle_config(tiny(true), opts(4, 1), "ckpt"); }),
            "ckpt: upcycle needs a dense checkpoint (it has 4 experts)");
  // and the good ones pass
  EXPECT_EQ(err(opts(2, 2, 8)), "");
  EXPECT_EQ(err(with(opts(4, 1), [](auto& o) { o.ders = upcycle_parse_delta("lowrank:8"); })), "");
  EXPECT_EQ(upcycle_layers("1,0", 2), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(upcycle_layers("every-other", 6), (std::vector<int64_t>{1, 3, 5}));
}
