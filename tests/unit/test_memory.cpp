// The memory a model reports is the memory it holds: activation_bytes() (what `bench train`
// prints as activation memory) equals the bytes the device handed out for the model's buffers,
// counted by the device itself, for dense, MoE, MoE-CT (every gate), LoRA and DeRS models, after a
// forward and a backward. A buffer left out of a block's hand-kept bytes() list, or counted
// twice, shows up here.
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

}  // namespace

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
