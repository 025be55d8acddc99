// DeRS experts (docs/methods.md §3.13): a shared base plus per-expert sparse, low-rank or
// quantized deltas. Zero deltas give the vanilla MoE bit for bit; non-zero ones give the MoE of
// the densified experts; gradients pass finite differences in double; the integer tensors
// survive a checkpoint.
#include <gtest/gtest.h>

#include <filesystem>

#include "kernels/parallel.hpp"
#include "model/delta.hpp"
#include "model/model.hpp"
#include "model_util.hpp"
#include "test_util.hpp"
#include "tiny_config.hpp"
#include "train/checkpoint.hpp"

using namespace moelab;
using namespace moelab::test;

namespace {

ModelConfig with_ders(ModelConfig c, DeltaKind kind, double p = 0.9) {
  c.ders.delta = kind;
  c.ders.p = p;
  c.ders.rank = 3;
  c.ders.alpha = 6;  // scale 2: exercised
  c.ders.bits = 3;
  c.ders.seed = 7;
  return c;
}

const char* kind_name(DeltaKind k) {
  return k == DeltaKind::Sparse ? "sparse" : k == DeltaKind::LowRank ? "lowrank" : "quant";
}

// The routed weights' tensor names of layer l (gate_up and down).
std::vector<std::string> expert_names(int64_t l) {
  const std::string pre = "model.layers." + std::to_string(l) + ".mlp.experts.";
  return {pre + "gate_up_proj", pre + "down_proj"};
}

// `van` (a vanilla MoE of the same config without ders) takes every tensor `ders` shares with
// it, and as expert e of each routed weight base + delta_e (in double, rounded once).
template <typename T>
void densify(const Model<T>& ders, Model<T>& van) {
  for (const TensorView& t : van.layout.tensors)
    if (const TensorView* u = ders.layout.find(t.name))
      std::copy_n(ders.params.begin() + u->offset, t.numel, van.params.begin() + t.offset);
  for (int64_t l = 0; l < ders.cfg.num_hidden_layers; l++)
    for (const std::string& name : expert_names(l)) {
      const TensorView* base = ders.layout.find(name + "_base");
      const TensorView* full = van.layout.find(name);
      ASSERT_TRUE(base && full) << name;
      const int64_t n = base->numel;
      for (int64_t e = 0; e < full->shape[0]; e++) {
        const std::vector<double> d = ders_delta(ders, name, e);
        for (int64_t i = 0; i < n; i++)
          van.params[size_t(full->offset + e * n + i)] =
              T(double(ders.params[size_t(base->offset + i)]) + d[size_t(i)]);
      }
    }
}

// Random codes in the bit width's range and random scales (a fresh quant delta is zero).
template <typename T>
void random_codes(Model<T>& m, uint64_t seed) {
  const int64_t qmax = m.cfg.ders.bits == 1 ? 1 : (1 << (m.cfg.ders.bits - 1)) - 1;
  for (size_t i = 0; i < m.codes.size(); i++)
    m.codes[i] = int8_t(int64_t(rng_u64(seed, 9, i) % uint64_t(2 * qmax + 1)) - qmax);
  for (const TensorView& t : m.layout.tensors)
    if (t.name.ends_with("_delta_scales"))
      for (int64_t i = 0; i < t.numel; i++)
        m.params[size_t(t.offset + i)] = T(0.1 * rng_uniform(seed, 10, uint64_t(i)));
}

}  // namespace

class Ders : public ::testing::TestWithParam<DeltaKind> {};

TEST_P(Ders, ZeroDeltasGiveTheVanillaMoeBitForBit) {
  const ModelConfig vc = tiny(true), dc = with_ders(vc, GetParam());
  const int64_t B = 2, T = 9;
  const Batch b = batch(B * T, vc.vocab_size, 5);
  Model<float> van(vc, B, T), ders(dc, B, T);
  ders.init_weights(3);
  jitter(ders, 4);
  // zero deltas: the jitter moved them
  for (const TensorView& t : ders.layout.tensors)
    if (t.name.ends_with("_delta_values") || t.name.ends_with("_delta_B") ||
        t.name.ends_with("_delta_scales"))
      std::fill_n(ders.params.begin() + t.offset, t.numel, 0.0f);
  densify(ders, van);  // every expert a copy of the base
  ders.forward(b.tokens, b.targets);
  van.forward(b.tokens, b.targets);
  EXPECT_TRUE(same_bits(logits_of(ders), logits_of(van)));
  EXPECT_LT(ders.layout.total, van.layout.total);  // E matrices stored once
}

TEST_P(Ders, DeltasGiveTheMoeOfTheDensifiedExperts) {
  // p = 0.5 rebuilds every expert; p = 0.97 adds most sparse deltas to x W^T directly
  for (double p : {0.5, 0.9, 0.97}) {
    if (GetParam() != DeltaKind::Sparse && p != 0.9) continue;
    const ModelConfig vc = tiny(true), dc = with_ders(vc, GetParam(), p);
    const int64_t B = 2, T = 9;
    const Batch b = batch(B * T, vc.vocab_size, 5);
    Model<double> van(vc, B, T), ders(dc, B, T);
    ders.init_weights(3);
    jitter(ders, 4);
    random_codes(ders, 6);
    densify(ders, van);
    const Losses ld = ders.forward(b.tokens, b.targets), lv = van.forward(b.tokens, b.targets);
    expect_close(logits_of(ders), logits_of(van), 1e-12, 1e-12, "DeRS vs densified experts");
    EXPECT_NEAR(ld.total(), lv.total(), 1e-12);
    // and the deltas matter: the base alone gives other logits
    Model<double> base_only(dc, B, T);
    base_only.params = ders.params, base_only.index = ders.index;
    for (const TensorView& t : base_only.layout.tensors)
      if (t.name.find("_delta_") != std::string::npos &&
          !t.name.ends_with("_delta_A"))  // A alone does nothing with B = 0
        std::fill_n(base_only.params.begin() + t.offset, t.numel, 0.0);
    base_only.forward(b.tokens, b.targets);
    EXPECT_FALSE(same_bits(logits_of(base_only), logits_of(ders)));
  }
}

TEST_P(Ders, ParallelPathsGiveTheSameBitsAsSerial) {
  const ModelConfig c = with_ders(tiny(true), GetParam(), 0.97);
  const int64_t B = 2, T = 9;
  const Batch b = batch(B * T, c.vocab_size, 5);
  auto run = [&](int64_t min_work) {
    const int64_t keep = parallel_min_work;
    parallel_min_work = min_work;
    Model<float> m(c, B, T);
    m.init_weights(3);
    jitter(m, 4);
    random_codes(m, 6);
    m.zero_grad();
    m.forward(b.tokens, b.targets);
    m.backward();
    parallel_min_work = keep;
    return std::pair{logits_of(m), m.grads};
  };
  const auto serial = run(int64_t(1) << 40), parallel = run(0);
  EXPECT_TRUE(same_bits(serial.first, parallel.first));
  EXPECT_TRUE(same_bits(serial.second, parallel.second));
}

TEST_P(Ders, GradientsMatchFiniteDifferences) {
  const ModelConfig c = with_ders(tiny(true), GetParam());
  const int64_t B = 2, T = 7;
  Model<double> m(c, B, T);
  m.init_weights(3);
  jitter(m, 4);
  random_codes(m, 6);
  const Batch b = batch(B * T, c.vocab_size, 5);
  m.zero_grad();
  m.forward(b.tokens, b.targets);
  m.backward();
  const std::vector<double> g = grad_full(m);
  int64_t checked = 0;
  for (const TensorView& t : m.layout.tensors) {
    if (t.name.find(".mlp.") == std::string::npos) continue;
    if (t.frozen) {  // quant scales: never trained, no gradient
      EXPECT_TRUE(t.name.ends_with("_delta_scales")) << t.name;
      EXPECT_TRUE(m.grad_of(t).empty()) << t.name;
      continue;
    }
    expect_tensor_fd(m, b, g, t, 60);
    checked++;
  }
  EXPECT_GE(checked, 2 * 4);  // per layer: router, base x2, biases, deltas
}

TEST_P(Ders, CheckpointKeepsPositionsAndCodes) {
  const ModelConfig c = with_ders(tiny(true), GetParam());
  Model<float> m(c, 1, 4), back(c, 1, 4);
  m.init_weights(3);
  jitter(m, 4);
  random_codes(m, 6);
  const std::string dir = (std::filesystem::temp_directory_path() /
                           ("moelab_ders_" + std::string(kind_name(GetParam()))))
                              .string();
  std::filesystem::remove_all(dir);
  checkpoint_write_model(dir, m, nlohmann::json::object());
  checkpoint_load(dir, back, nullptr);
  EXPECT_TRUE(same_bits(back.params, m.params));
  EXPECT_TRUE(same_bits(back.index, m.index));
  EXPECT_TRUE(same_bits(back.codes, m.codes));
  // The stored counts: parameters, and quant codes at their bit width
  const ParamCounts pc = config_count(c);
  EXPECT_EQ(pc.total, m.layout.total + m.layout.total_i8);
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Kinds, Ders,
                         ::testing::Values(DeltaKind::Sparse, DeltaKind::LowRank, DeltaKind::Quant),
                         [](const auto& info) { return std::string(kind_name(info.param)); });

TEST(DersPositions, FreshModelsDrawDistinctSortedPositionsPerExpert) {
  const ModelConfig c = with_ders(tiny(true), DeltaKind::Sparse);
  Model<float> a(c, 1, 4), b(c, 1, 4);
  a.init_weights(1);
  b.init_weights(2);  // positions follow ders.seed, not the weight seed
  EXPECT_TRUE(same_bits(a.index, b.index));
  for (const IntTensor& t : a.layout.ints) {
    const int64_t E = t.shape[0], nnz = t.shape[1];
    for (int64_t e = 0; e < E; e++) {
      const int32_t* p = a.index.data() + t.offset + e * nnz;
      for (int64_t j = 0; j < nnz; j++) {
        ASSERT_TRUE(p[j] >= 0 && p[j] < t.bound) << t.name;
        if (j > 0) {
          ASSERT_LT(p[j - 1], p[j]) << t.name;
        }
      }
    }
    // experts draw their own positions
    EXPECT_NE(0, std::memcmp(a.index.data() + t.offset, a.index.data() + t.offset + nnz,
                             size_t(nnz) * sizeof(int32_t)));
  }
  ModelConfig c2 = c;
  c2.ders.seed = 8;
  Model<float> d(c2, 1, 4);
  d.init_weights(1);
  EXPECT_FALSE(same_bits(a.index, d.index));
}

TEST(DersPositions, APositionOutsideItsMatrixIsRefusedOnLoad) {
  const ModelConfig c = with_ders(tiny(true), DeltaKind::Sparse);
  Model<float> m(c, 1, 4);
  m.init_weights(1);
  const IntTensor& t = m.layout.ints.front();
  m.index[size_t(t.offset + 3)] = int32_t(t.bound);
  const std::string dir = (std::filesystem::temp_directory_path() / "moelab_ders_bad").string();
  std::filesystem::remove_all(dir);
  checkpoint_write_model(dir, m, nlohmann::json::object());
  Model<float> back(c, 1, 4);
  try {
    checkpoint_load(dir, back, nullptr);
    ADD_FAILURE() << "loaded a position outside its matrix";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(t.name), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("outside"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}
