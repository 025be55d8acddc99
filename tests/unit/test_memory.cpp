// The memory a model reports is the memory it holds: activation_bytes() (what `bench train`
// prints as activation memory) equals the bytes the device handed out for the model's buffers,
// counted by the device itself, for dense, MoE, MoE-CT (every gate), LoRA and DeRS models, after a
// forward and a backward; and each block's buffers as the decoder reserves them (no backward
// scratch). Every count comes from one buffers() list per struct (model/buffers.hpp); a buffer
// the list leaves out fails the build, and one the list counts twice shows up here.
#include <gtest/gtest.h>

#include "backend/device.hpp"
#include "model/model.hpp"
#include "model_util.hpp"
#include "test_util.hpp"
#include "tiny_config.hpp"

using namespace moelab;
using namespace moelab::test;

namespace {

ModelConfig with_ct(ModelConfig c, CtGate gate) {
  c.moe_ct.experts = 3;
  c.moe_ct.top_k = 2;
  c.moe_ct.gate = gate;
  c.moe_ct.layers = {1};
  return c;
}

ModelConfig with_lora(ModelConfig c) {
  c.lora.rank = 2;
  c.lora.targets = {"self_attn\\.(q|v)_proj", "mlp\\.experts"};
  return c;
}

// The device's bytes held by a model of config c after a forward and a backward, and what the
// model reports.
template <typename T>
std::pair<int64_t, int64_t> held_and_reported(const ModelConfig& c) {
  Device& dev = device_default();
  const int64_t before = dev.live_bytes();
  Model<T> m(c, 2, 9);
  m.init_weights(3);
  const Batch b = batch(2 * 9, c.vocab_size, 5);
  m.zero_grad();
  m.forward(b.tokens, b.targets);
  m.backward();
  return {dev.live_bytes() - before, m.activation_bytes()};
}

// Each layer's blocks with buffers of their own, reserved for N rows as the decoder does
// (backward false) and as training does: their bytes() are the device's bytes at every size,
// and the device has them all back once the buffers go.
template <typename T>
void expect_block_bytes(const ModelConfig& c, const std::string& name) {
  Device& dev = device_default();
  const Model<T> m(c, 1, 1);
  for (size_t l = 0; l < m.ffn_blocks().size(); l++) {
    for (bool backward : {false, true}) {
      const int64_t before = dev.live_bytes();
      {
        typename AttentionBlock<T>::Acts aa;
        typename AttentionBlock<T>::Work aw;
        typename FfnBlock<T>::Acts fa;
        typename FfnBlock<T>::Work fw;
        for (int64_t N : {1, 7}) {
          m.attention_blocks()[l].reserve(dev, aa, aw, N, backward);
          m.ffn_blocks()[l].reserve(dev, fa, fw, N, backward);
          EXPECT_EQ(aa.bytes() + aw.bytes() + fa.bytes() + fw.bytes(), dev.live_bytes() - before)
              << name << " layer " << l << " N " << N << " backward " << backward;
        }
      }
      EXPECT_EQ(dev.live_bytes(), before) << name << " layer " << l;
    }
  }
}

}  // namespace

TEST(Memory, BlockBytesAreTheBytesTheDeviceHolds) {
  expect_block_bytes<float>(tiny(false), "dense");
  expect_block_bytes<float>(tiny(true), "moe");
  expect_block_bytes<float>(with_lora(tiny(true)), "lora moe");
  for (CtGate gate : {CtGate::Fixed, CtGate::Scalar, CtGate::Token}) {
    expect_block_bytes<float>(with_ct(tiny(true), gate), "moe-ct moe");
    expect_block_bytes<double>(with_ct(tiny(false), gate), "moe-ct dense");
  }
}

TEST(Memory, ActivationBytesAreTheBytesTheDeviceHolds) {
  std::vector<std::pair<std::string, ModelConfig>> configs = {
      {"dense", tiny(false)},
      {"moe", tiny(true)},
      {"lora moe", with_lora(tiny(true))},
      {"lora dense", with_lora(tiny(false))}};
  for (DeltaKind delta : {DeltaKind::Sparse, DeltaKind::LowRank}) {
    ModelConfig c = tiny(true);  // DeRS: a rebuilt expert and its gradient in scratch
    c.ders.delta = delta;
    c.ders.p = 0.5;
    c.ders.rank = 2;
    configs.push_back({"ders", c});
  }
  for (CtGate gate : {CtGate::Fixed, CtGate::Scalar, CtGate::Token}) {
    configs.push_back({"moe-ct dense", with_ct(tiny(false), gate)});
    configs.push_back({"moe-ct moe", with_ct(tiny(true), gate)});
  }
  for (const auto& [name, c] : configs) {
    const auto [held, reported] = held_and_reported<float>(c);
    EXPECT_GT(held, 0) << name;
    EXPECT_EQ(reported, held) << name << " (float)";
    const auto [held64, reported64] = held_and_reported<double>(c);
    EXPECT_EQ(reported64, held64) << name << " (double)";
  }
}

// Everything a model took is given back when it goes.
TEST(Memory, AModelGivesItsBuffersBack) {
  Device& dev = device_default();
  const int64_t before = dev.live_bytes();
  held_and_reported<float>(with_ct(tiny(true), CtGate::Token));
  EXPECT_EQ(dev.live_bytes(), before);
}
