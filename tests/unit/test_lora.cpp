// Merging LoRA adapters into their weights (model/lora.*, docs/methods.md §3.11): the merged
// model, which has no adapters, gives the adapted model's logits (double: to 1e-12, float: to
// 1e-5 relative), dense and MoE, on slices of the fused q|k|v, o and the experts' InOut matrices.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/rng.hpp"
#include "model/lora.hpp"
#include "model/model.hpp"
#include "test_util.hpp"
#include "tiny_config.hpp"

using namespace moelab;
using namespace moelab::test;

namespace {

// alpha != rank: the scale (here 5/3 and 7/2) is exercised.
ModelConfig with_lora(ModelConfig c, int64_t rank, double alpha, std::vector<std::string> targets) {
  c.lora = {.rank = rank, .alpha = alpha, .targets = std::move(targets)};
  return c;
}
ModelConfig qvo_experts(bool moe) {
  return with_lora(tiny(moe), 3, 5.0,
                   {"self_attn\\.(q|v|o)_proj", "mlp\\.experts\\.(gate_up|down)_proj"});
}
ModelConfig qkv_gate_up(bool moe) {
  return with_lora(tiny(moe), 2, 7.0, {"self_attn\\.(q|k|v)_proj", "gate_up"});
}

std::pair<std::vector<int32_t>, std::vector<int32_t>> batch(int64_t N, int64_t V) {
  std::vector<int32_t> tokens, targets;
  for (int64_t i = 0; i < N; i++) {
    tokens.push_back(int32_t(rng_u64(5, 1, uint64_t(i)) % uint64_t(V)));
    targets.push_back(int32_t(rng_u64(5, 2, uint64_t(i)) % uint64_t(V)));
  }
  return {tokens, targets};
}

// The adapted model with every tensor perturbed, B included (B = 0 would merge to nothing).
template <typename T>
void jitter(Model<T>& m) {
  for (size_t ti = 0; ti < m.layout.tensors.size(); ti++) {
    const TensorView& t = m.layout.tensors[ti];
    for (int64_t i = 0; i < t.numel; i++)
      m.params[size_t(t.offset + i)] += T(0.2 * rng_normal(4, ti, uint64_t(i)));
  }
}

template <typename T>
std::vector<T> logits_after_forward(Model<T>& m) {
  const auto [tokens, targets] = batch(m.N, m.cfg.vocab_size);
  m.forward(tokens, targets);
  return {m.logits().begin(), m.logits().end()};
}

template <typename T>
std::vector<T> tensor(Model<T>& m, const std::string& name) {
  const TensorView* t = m.layout.find(name);
  EXPECT_NE(t, nullptr) << name;
  if (!t) return {};
  const auto v = m.view(*t);
  return {v.begin(), v.end()};
}

// The adapted model (jittered) and its merge give the same logits to rtol, relative to each
// logit and to the largest (a logit near 0 carries the rounding of the others).
template <typename T>
void expect_merge_keeps_logits(const ModelConfig& lc, double rtol) {
  const int64_t B = 2, Tq = 9;
  Model<T> lora(lc, B, Tq), merged(lora_merged_config(lc), B, Tq);
  lora.init_weights(3);
  jitter(lora);
  lora_merge(lora, merged);
  EXPECT_EQ(lora_slot_count(merged.blocks()), 0);
  const std::vector<T> want = logits_after_forward(lora), got = logits_after_forward(merged);
  double top = 0;
  for (T v : want) top = std::max(top, std::abs(double(v)));
  expect_close(got, want, rtol, rtol * top, "merged vs adapted logits");
  // The adapters matter: the base alone (B = 0) is far from the adapted model.
  Model<T> base(lora_merged_config(lc), B, Tq);
  std::copy_n(lora.params.begin(), base.layout.total, base.params.begin());
  const std::vector<T> plain = logits_after_forward(base);
  double far = 0;
  for (size_t i = 0; i < plain.size(); i++)
    far = std::max(far, std::abs(double(plain[i] - want[i])));
  EXPECT_GT(far, 1e-2) << "the adapters change nothing: the comparison above cannot fail";
}

}  // namespace

class LoraMerge : public ::testing::TestWithParam<bool> {};

TEST_P(LoraMerge, MergedModelGivesTheAdaptedLogitsInDouble) {
  expect_merge_keeps_logits<double>(qvo_experts(GetParam()), 1e-12);
  expect_merge_keeps_logits<double>(qkv_gate_up(GetParam()), 1e-12);
}

TEST_P(LoraMerge, MergedModelGivesTheAdaptedLogitsInFloat) {
  expect_merge_keeps_logits<float>(qvo_experts(GetParam()), 1e-5);
  expect_merge_keeps_logits<float>(qkv_gate_up(GetParam()), 1e-5);
}

// Each slot lands on its own output columns, in both layouts: v_proj is the last slice of the
// fused OutIn [out, in] q|k|v matrix, k_proj (not targeted) is untouched; the experts' matrices
// are InOut [E, in, out], their adapters [E, r, in] and [E, out, r].
TEST_P(LoraMerge, EachSlotAddsScaleTimesBAOnItsOwnColumns) {
  const bool moe = GetParam();
  const ModelConfig lc = qvo_experts(moe);
  const double scale = 5.0 / 3.0;
  Model<double> lora(lc, 1, 4), merged(lora_merged_config(lc), 1, 4);
  lora.init_weights(3);
  jitter(lora);
  lora_merge(lora, merged);
  const std::string pre = "model.layers.1.";
  // the base tensors that carry no adapter are the same bits
  for (const char* name : {"self_attn.k_proj.weight", "self_attn.q_proj.bias",
                           "input_layernorm.weight", "mlp.experts.gate_up_proj_bias"})
    EXPECT_EQ(tensor(merged, pre + name), tensor(lora, pre + name)) << name;
  EXPECT_EQ(tensor(merged, "model.embed_tokens.weight"), tensor(lora, "model.embed_tokens.weight"));
  // v_proj [KV*hd, d]: W'[o, i] = W[o, i] + scale sum_k B[o, k] A[k, i]
  {
    const int64_t d = lc.hidden_size, out = lc.num_key_value_heads * lc.head_dim, r = 3;
    const auto W = tensor(lora, pre + "self_attn.v_proj.weight");
    const auto A = tensor(lora, pre + "self_attn.v_proj.lora_A.weight");
    const auto Bm = tensor(lora, pre + "self_attn.v_proj.lora_B.weight");
    const auto got = tensor(merged, pre + "self_attn.v_proj.weight");
    ASSERT_EQ(got.size(), size_t(out * d));
    std::vector<double> want(W);
    for (int64_t o = 0; o < out; o++)
      for (int64_t i = 0; i < d; i++)
        for (int64_t k = 0; k < r; k++)
          want[size_t(o * d + i)] += scale * Bm[size_t(o * r + k)] * A[size_t(k * d + i)];
    expect_close(got, want, 1e-14, 1e-14, "v_proj merged");
  }
  // down_proj [E, I, d] InOut: W'[e, i, o] = W[e, i, o] + scale sum_k B[e, o, k] A[e, k, i]
  {
    const int64_t E = lc.num_local_experts, I = lc.intermediate_size, d = lc.hidden_size, r = 3;
    const auto W = tensor(lora, pre + "mlp.experts.down_proj");
    const auto A = tensor(lora, pre + "mlp.experts.down_proj.lora_A.weight");
    const auto Bm = tensor(lora, pre + "mlp.experts.down_proj.lora_B.weight");
    const auto got = tensor(merged, pre + "mlp.experts.down_proj");
    ASSERT_EQ(A.size(), size_t(E * r * I));
    ASSERT_EQ(Bm.size(), size_t(E * d * r));
    std::vector<double> want(W);
    for (int64_t e = 0; e < E; e++)
      for (int64_t i = 0; i < I; i++)
        for (int64_t o = 0; o < d; o++)
          for (int64_t k = 0; k < r; k++)
            want[size_t((e * I + i) * d + o)] +=
                scale * Bm[size_t((e * d + o) * r + k)] * A[size_t((e * r + k) * I + i)];
    expect_close(got, want, 1e-14, 1e-14, "down_proj merged");
  }
}

// B = 0 (a fresh adapter): the merge gives the base weights, bit for bit.
TEST_P(LoraMerge, ZeroBMergesToTheBaseBitForBit) {
  const ModelConfig lc = qvo_experts(GetParam());
  Model<float> lora(lc, 1, 4), merged(lora_merged_config(lc), 1, 4);
  lora.init_weights(3);
  lora_merge(lora, merged);
  ASSERT_LT(merged.layout.total, lora.layout.total);
  EXPECT_TRUE(std::equal(merged.params.begin(), merged.params.end(), lora.params.begin()));
}

INSTANTIATE_TEST_SUITE_P(DenseAndMoe, LoraMerge, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "moe" : "dense"; });

TEST(LoraMerge, MergedConfigDropsOnlyTheAdapters) {
  const ModelConfig lc = qvo_experts(true);
  const ModelConfig m = lora_merged_config(lc);
  EXPECT_EQ(m.lora.rank, 0);
  EXPECT_TRUE(m.lora.targets.empty());
  EXPECT_FALSE(config_to_json(m).contains("lora"));
  nlohmann::json a = config_to_json(lc);
  a.erase("lora");
  EXPECT_EQ(a, config_to_json(m));
}

TEST(LoraMerge, CountsSlotsAndRefusesAMismatchedTarget) {
  const ModelConfig lc = qkv_gate_up(true);
  Model<double> lora(lc, 1, 2), plain(lora_merged_config(lc), 1, 2), same(lc, 1, 2);
  // per layer: q, k and v slices of the fused projection, and gate_up
  EXPECT_EQ(lora_slot_count(lora.blocks()), 2 * 4);
  EXPECT_EQ(lora_slot_count(plain.blocks()), 0);
  EXPECT_NE(error_of([&] { lora_merge(lora, same); }), "");
  Model<double> other(lora_merged_config(qkv_gate_up(false)), 1, 2);
  EXPECT_NE(error_of([&] { lora_merge(lora, other); }), "");
}
