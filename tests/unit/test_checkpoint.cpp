// Checkpoints: exact round trips of weights and optimizer state, keep-last, an interrupted write
// (the temporary folder a kill -9 leaves) never counts, and a mismatching config is refused.
// AdamW keeps moments for trainable tensors only, with the arithmetic of a full-layout optimizer;
// checkpoints store them by name; init_from loads one model's weights into a larger one.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/safetensors.hpp"
#include "kernels/parallel.hpp"
#include "test_util.hpp"
#include "train/checkpoint.hpp"
#include "train/zero.hpp"

using namespace moelab;
using moelab::test::error_of;
using moelab::test::randn;
namespace fs = std::filesystem;

namespace {

ModelConfig small() {
  ModelConfig c;
  c.vocab_size = 50;
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 8;
  c.intermediate_size = 16;
  c.ffn_type = FfnKind::Moe;
  c.num_local_experts = 4;
  c.num_experts_per_tok = 2;
  c.layer_sliding = {false, false};
  c.max_position_embeddings = 16;
  return c;
}

struct RunDir {
  std::string path;
  RunDir() {
    path = (fs::temp_directory_path() /
            ("moelab-ckpt-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    fs::remove_all(path);
  }
  ~RunDir() { fs::remove_all(path); }
};

// Everything but layer 1 frozen: what fine-tuning one block looks like.
constexpr const char* kAllButLayer1 = "^(?!model\\.layers\\.1\\.)";

// The layout of a model of this config (copied: the tests freeze tensors in it).
ParamLayout layout_of(const ModelConfig& c) {
  return Model<float>(c, 1, 4).layout;
}

int64_t trainable_numel(const ParamLayout& l) {
  int64_t n = 0;
  for (const TensorView& t : l.tensors) n += t.frozen ? 0 : t.numel;
  return n;
}

// The gradients of a layout's trainable tensors, packed as AdamW takes them, from a gradient
// per parameter.
std::vector<float> packed_of(const ParamLayout& l, const std::vector<float>& g) {
  std::vector<float> out;  // [trainable_numel(l)]
  for (const TensorView& t : l.tensors)
    if (!t.frozen) out.insert(out.end(), g.begin() + t.offset, g.begin() + t.offset + t.numel);
  return out;
}

bool same_bits(const float* a, const float* b, int64_t n) {
  return std::memcmp(a, b, size_t(n) * sizeof(float)) == 0;
}

void train_steps(Model<float>& m, AdamW<float>& opt, int n) {
  std::vector<int32_t> tok(32), tgt(32);
  for (int i = 0; i < 32; i++) tok[size_t(i)] = i % 50, tgt[size_t(i)] = (i * 7) % 50;
  for (int s = 0; s < n; s++) {
    m.zero_grad();
    m.forward(tok, tgt);
    m.backward();
    opt.update(m.params, m.grads, 1e-2);
  }
}

}  // namespace

TEST(Checkpoint, RoundTripIsExactAndKeepsTheLastK) {
  RunDir run;
  Model<float> m(small(), 2, 16);
  m.init_weights(1);
  AdamW<float> opt(m.layout, AdamWConfig{});
  for (int64_t step : {10, 20, 30}) {
    train_steps(m, opt, 2);
    checkpoint_save(run.path, step, m, opt,
                    {{"phase", "A"}, {"data", {{"epoch", 0}, {"index", step}}}}, 2);
  }
  const auto all = checkpoint_list(run.path);
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(fs::path(all.back()).filename(), "step_00000030");
  Model<float> back(small(), 2, 16);
  AdamW<float> opt2(back.layout, AdamWConfig{});
  const auto state = checkpoint_load(all.back(), back, &opt2);
  EXPECT_EQ(state["step"], 30);
  EXPECT_EQ(state["phase"], "A");
  EXPECT_EQ(state["data"]["index"], 30);
  EXPECT_EQ(opt2.step, opt.step);
  EXPECT_EQ(0, std::memcmp(back.params.data(), m.params.data(), m.params.size() * 4));
  EXPECT_EQ(0, std::memcmp(opt2.m.data(), opt.m.data(), opt.m.size() * 4));
  EXPECT_EQ(0, std::memcmp(opt2.v.data(), opt.v.data(), opt.v.size() * 4));
  // Training on from the loaded state gives the same bits as not stopping.
  train_steps(m, opt, 3);
  train_steps(back, opt2, 3);
  EXPECT_EQ(0, std::memcmp(back.params.data(), m.params.data(), m.params.size() * 4));
}

TEST(Checkpoint, AnInterruptedWriteLeavesThePreviousOneLoadable) {
  RunDir run;
  Model<float> m(small(), 2, 16);
  m.init_weights(2);
  AdamW<float> opt(m.layout, AdamWConfig{});
  checkpoint_save(run.path, 5, m, opt, {}, 0);
  // What kill -9 in the middle of the next write leaves: a hidden temporary folder with part of
  // the files, and a half-written file inside it.
  const fs::path tmp = fs::path(run.path) / ".step_00000006.tmp";
  fs::create_directories(tmp);
  std::ofstream(tmp / "model.safetensors.tmp") << "partial";
  const auto all = checkpoint_list(run.path);
  ASSERT_EQ(all.size(), 1u);
  Model<float> back(small(), 2, 16);
  checkpoint_load(all.back(), back, nullptr);
  EXPECT_EQ(0, std::memcmp(back.params.data(), m.params.data(), m.params.size() * 4));
  checkpoint_save(run.path, 6, m, opt, {}, 0);  // the next save replaces the leftovers
  EXPECT_FALSE(fs::exists(tmp));
  EXPECT_EQ(checkpoint_list(run.path).size(), 2u);
}

TEST(Checkpoint, MismatchingConfigOrBrokenFilesAreRefused) {
  RunDir run;
  Model<float> m(small(), 2, 16);
  AdamW<float> opt(m.layout, AdamWConfig{});
  const std::string dir = checkpoint_save(run.path, 1, m, opt, {}, 0);
  ModelConfig other = small();
  other.num_local_experts = 8;
  Model<float> wrong(other, 2, 16);
  EXPECT_NE(error_of([&] {
              checkpoint_load(dir, wrong, nullptr);
            }).find("'num_local_experts' is 4 in the checkpoint and 8 here"),
            std::string::npos);
  fs::resize_file(fs::path(dir) / "model.safetensors", 100);
  Model<float> back(small(), 2, 16);
  EXPECT_NE(error_of([&] { checkpoint_load(dir, back, nullptr); }).find("model.safetensors"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              checkpoint_load(run.path + "/nope", back, nullptr);
            }).find("not a checkpoint"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              checkpoint_save("/proc/moelab-cannot", 1, m, opt, {}, 0);
            }).find("cannot create the run directory"),
            std::string::npos);
}

// ----------------------------------------------------------------------------
// AdamW on trainable tensors only

TEST(AdamWMoments, ExistForTrainableTensorsOnly) {
  ParamLayout layout = layout_of(small());
  {
    const AdamW<float> all(layout, AdamWConfig{});
    EXPECT_EQ(int64_t(all.m.size()), layout.total);
    // All trainable: moments at the parameters' own offsets.
    for (const AdamWSpan& s : all.spans()) EXPECT_EQ(s.param, s.moment);
  }
  EXPECT_GT(layout.set_frozen(kAllButLayer1, true), 0);
  const int64_t n = trainable_numel(layout);
  ASSERT_GT(n, 0);
  ASSERT_LT(n, layout.total / 2);
  const AdamW<float> opt(layout, AdamWConfig{});
  EXPECT_EQ(int64_t(opt.m.size()), n);
  EXPECT_EQ(int64_t(opt.v.size()), n);
  int64_t at = 0;
  for (size_t i = 0; i < layout.tensors.size(); i++) {
    const TensorView& t = layout.tensors[i];
    EXPECT_EQ(opt.moment_offset(i), t.frozen ? -1 : at) << t.name;
    at += t.frozen ? 0 : t.numel;
  }
}

// A layout whose experts span several 16K-element chunks of the update loop.
ParamLayout wide_layout() {
  ModelConfig c = small();
  c.hidden_size = 64;
  c.intermediate_size = 64;
  return layout_of(c);
}

TEST(AdamWMoments, SameBitsAsAFullLayoutOptimizerAndFrozenStayPut) {
  ParamLayout full = wide_layout(), part = wide_layout();
  part.set_frozen(kAllButLayer1, true);
  part.set_frozen("router", true);  // a hole inside the trainable layer
  const int64_t n = full.total;
  auto p_full = randn<float>(n, 1), p_part = p_full;
  const auto p0 = p_full;
  AdamW<float> o_full(full, AdamWConfig{0.9, 0.95, 1e-8, 0.1});
  AdamW<float> o_part(part, AdamWConfig{0.9, 0.95, 1e-8, 0.1});
  for (int s = 0; s < 5; s++) {
    const auto g = randn<float>(n, 10 + uint64_t(s));
    o_full.update(p_full, g, 1e-2, 0.7);
    o_part.update(p_part, packed_of(part, g), 1e-2, 0.7);
  }
  for (size_t i = 0; i < part.tensors.size(); i++) {
    const TensorView& t = part.tensors[i];
    if (t.frozen) {
      // Weight decay is on, yet a frozen tensor keeps every bit.
      EXPECT_TRUE(same_bits(&p_part[size_t(t.offset)], &p0[size_t(t.offset)], t.numel)) << t.name;
    } else {
      EXPECT_TRUE(same_bits(&p_part[size_t(t.offset)], &p_full[size_t(t.offset)], t.numel))
          << t.name;
      EXPECT_TRUE(same_bits(&o_part.m[size_t(o_part.moment_offset(i))], &o_full.m[size_t(t.offset)],
                            t.numel))
          << t.name;
      EXPECT_FALSE(same_bits(&p_part[size_t(t.offset)], &p0[size_t(t.offset)], t.numel)) << t.name;
    }
  }
}

TEST(AdamWMoments, ParallelChunksGiveTheSameBitsAsSerial) {
  ParamLayout layout = wide_layout();
  layout.set_frozen("self_attn|norm", true);  // many spans, chunks crossing their borders
  ASSERT_GT(trainable_numel(layout), 3 << 14);
  auto run = [&](int64_t min_work) {
    const int64_t keep = parallel_min_work;
    parallel_min_work = min_work;
    auto p = randn<float>(layout.total, 1);
    AdamW<float> opt(layout, AdamWConfig{});
    for (int s = 0; s < 3; s++)
      opt.update(p, randn<float>(trainable_numel(layout), 20 + uint64_t(s)), 1e-2);
    parallel_min_work = keep;
    return p;
  };
  const auto serial = run(int64_t(1) << 62), parallel = run(1);
  EXPECT_TRUE(same_bits(serial.data(), parallel.data(), int64_t(serial.size())));
}

TEST(AdamWMoments, FollowTheFrozenSetUntilTheFirstStepOnly) {
  ParamLayout layout = layout_of(small());
  AdamW<float> opt(layout, AdamWConfig{});
  layout.set_frozen(kAllButLayer1, true);  // after construction, as a trainer may do
  EXPECT_FALSE(opt.in_sync());
  auto p = randn<float>(layout.total, 1);
  opt.update(p, randn<float>(trainable_numel(layout), 2), 1e-2);
  EXPECT_TRUE(opt.in_sync());
  EXPECT_EQ(int64_t(opt.m.size()), trainable_numel(layout));
  layout.set_frozen("^model\\.layers\\.1\\.mlp\\.router\\.bias$", true);
  const std::string e =
      error_of([&] { opt.update(p, randn<float>(trainable_numel(layout), 3), 1e-2); });
  EXPECT_NE(e.find("'model.layers.1.mlp.router.bias' was frozen after training started"),
            std::string::npos)
      << e;
}

// ----------------------------------------------------------------------------
// checkpoints of partly frozen models

TEST(AdamWMoments, ResumeWithFrozenTensorsIsBitIdentical) {
  RunDir run;
  Model<float> m(small(), 2, 16);
  m.init_weights(3);
  m.layout.set_frozen(kAllButLayer1, true);
  AdamW<float> opt(m.layout, AdamWConfig{});
  const auto p0 = m.params;
  train_steps(m, opt, 3);
  const std::string dir = checkpoint_save(run.path, 3, m, opt, {}, 0);
  // The optimizer file names the trainable tensors, and no others.
  const auto saved = safetensors_read(dir + "/optimizer.safetensors");
  EXPECT_EQ(saved.size(), 2 * size_t(std::count_if(m.layout.tensors.begin(), m.layout.tensors.end(),
                                                   [](const TensorView& t) { return !t.frozen; })));
  for (const TensorView& t : m.layout.tensors)
    EXPECT_EQ(saved.contains("m:" + t.name), !t.frozen) << t.name;

  Model<float> back(small(), 2, 16);
  back.layout.set_frozen(kAllButLayer1, true);
  AdamW<float> opt2(back.layout, AdamWConfig{});
  checkpoint_load(dir, back, &opt2);
  EXPECT_EQ(opt2.step, 3);
  EXPECT_TRUE(same_bits(opt2.m.data(), opt.m.data(), int64_t(opt.m.size())));
  EXPECT_TRUE(same_bits(opt2.v.data(), opt.v.data(), int64_t(opt.v.size())));
  train_steps(m, opt, 3);
  train_steps(back, opt2, 3);
  EXPECT_TRUE(same_bits(back.params.data(), m.params.data(), m.layout.total));
  for (const TensorView& t : m.layout.tensors) {
    if (t.frozen) {
      EXPECT_TRUE(same_bits(&m.params[size_t(t.offset)], &p0[size_t(t.offset)], t.numel)) << t.name;
    }
  }
}

TEST(AdamWMoments, ResumeWithAnotherFrozenSetIsRefusedNamingTheTensor) {
  RunDir run;
  Model<float> m(small(), 2, 16);
  m.layout.set_frozen(kAllButLayer1, true);
  AdamW<float> opt(m.layout, AdamWConfig{});
  train_steps(m, opt, 1);
  const std::string dir = checkpoint_save(run.path, 1, m, opt, {}, 0);
  Model<float> more(small(), 2, 16);
  more.layout.set_frozen(kAllButLayer1, true);
  more.layout.set_frozen("^model\\.norm\\.weight$", false);
  AdamW<float> o_more(more.layout, AdamWConfig{});
  EXPECT_NE(error_of([&] { checkpoint_load(dir, more, &o_more); })
                .find("optimizer.safetensors: tensor 'model.norm.weight' was frozen in the "
                      "checkpoint but is trained here"),
            std::string::npos);
  Model<float> fewer(small(), 2, 16);
  fewer.layout.set_frozen(kAllButLayer1, true);
  fewer.layout.set_frozen("^model\\.layers\\.1\\.input_layernorm\\.weight$", true);
  AdamW<float> o_fewer(fewer.layout, AdamWConfig{});
  EXPECT_NE(error_of([&] { checkpoint_load(dir, fewer, &o_fewer); })
                .find("tensor 'model.layers.1.input_layernorm.weight' was trained in the "
                      "checkpoint but is frozen here"),
            std::string::npos);
  // Weights alone (evaluation) do not care about the frozen set.
  Model<float> eval(small(), 2, 16);
  checkpoint_load(dir, eval, nullptr);
  EXPECT_TRUE(same_bits(eval.params.data(), m.params.data(), m.layout.total));
}

TEST(AdamWMoments, AnOlderFullLayoutCheckpointLoadsItsTrainableParts) {
  RunDir run;
  Model<float> m(small(), 2, 16);
  m.init_weights(4);
  AdamW<float> opt(m.layout, AdamWConfig{});
  train_steps(m, opt, 2);
  // All trainable, the file holds every tensor's moments: the older format, once the marker the
  // older versions did not write is gone.
  const std::string dir = checkpoint_save(run.path, 2, m, opt, {}, 0);
  const std::string state_path = dir + "/trainer_state.json";
  nlohmann::json state = nlohmann::json::parse(std::ifstream(state_path));
  ASSERT_EQ(state.value("optimizer_moments", ""), "trainable");
  state.erase("optimizer_moments");
  std::ofstream(state_path) << state.dump();
  Model<float> back(small(), 2, 16);
  back.layout.set_frozen(kAllButLayer1, true);
  AdamW<float> opt2(back.layout, AdamWConfig{});
  checkpoint_load(dir, back, &opt2);
  EXPECT_EQ(opt2.step, 2);
  for (size_t i = 0; i < back.layout.tensors.size(); i++) {
    const TensorView& t = back.layout.tensors[i];
    if (t.frozen) continue;
    const size_t at = size_t(opt2.moment_offset(i));
    EXPECT_TRUE(same_bits(&opt2.m[at], &opt.m[size_t(t.offset)], t.numel)) << t.name;
    EXPECT_TRUE(same_bits(&opt2.v[at], &opt.v[size_t(t.offset)], t.numel)) << t.name;
  }
}

// ----------------------------------------------------------------------------
// init_from

TEST(InitFrom, TheSameConfigLoadsEveryTensor) {
  RunDir run;
  Model<float> m(small(), 2, 16);
  m.init_weights(5);
  AdamW<float> opt(m.layout, AdamWConfig{});
  train_steps(m, opt, 2);
  const std::string dir = checkpoint_save(run.path, 2, m, opt, {}, 0);
  Model<float> to(small(), 2, 16);
  to.init_weights(6);
  const InitReport r = checkpoint_init_from(dir, to);
  EXPECT_TRUE(r.fresh.empty());
  EXPECT_EQ(r.loaded.size(), m.layout.tensors.size());
  EXPECT_TRUE(same_bits(to.params.data(), m.params.data(), m.layout.total));
}

TEST(InitFrom, AddedTensorsAndLayersStayFresh) {
  RunDir run;
  ModelConfig c = small();
  c.attention_bias = false;
  Model<float> m(c, 2, 16);
  m.init_weights(7);
  AdamW<float> opt(m.layout, AdamWConfig{});
  const std::string dir = checkpoint_save(run.path, 0, m, opt, {}, 0);
  ModelConfig big = small();  // biases on, and a third layer
  big.num_hidden_layers = 3;
  big.layer_sliding = {false, false, true};
  big.sliding_window = 8;
  big.num_experts_per_tok = 1;
  Model<float> to(big, 2, 16);
  to.init_weights(8);
  const auto init = to.params;
  const InitReport r = checkpoint_init_from(dir, to);
  EXPECT_EQ(r.loaded.size(), m.layout.tensors.size());
  EXPECT_EQ(r.loaded.size() + r.fresh.size(), to.layout.tensors.size());
  for (const std::string& name : r.fresh) {
    EXPECT_TRUE(name.find("bias") != std::string::npos ||
                name.find("layers.2.") != std::string::npos)
        << name;
    const TensorView* t = to.layout.find(name);
    EXPECT_TRUE(same_bits(&to.params[size_t(t->offset)], &init[size_t(t->offset)], t->numel));
  }
  for (const std::string& name : r.loaded) {
    const TensorView *t = to.layout.find(name), *f = m.layout.find(name);
    EXPECT_TRUE(same_bits(&to.params[size_t(t->offset)], &m.params[size_t(f->offset)], t->numel))
        << name;
  }
}

TEST(InitFrom, ShapesMissingTensorsFilesAndMeaningsAreRefusedInOneLine) {
  RunDir run;
  Model<float> m(small(), 2, 16);
  m.init_weights(9);
  AdamW<float> opt(m.layout, AdamWConfig{});
  const std::string dir = checkpoint_save(run.path, 0, m, opt, {}, 0);
  auto refusal = [&](const ModelConfig& c) {
    Model<float> to(c, 2, 16);
    to.init_weights(10);
    const auto before = to.params;
    const std::string e = error_of([&] { checkpoint_init_from(dir, to); });
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    EXPECT_TRUE(same_bits(to.params.data(), before.data(), to.layout.total))
        << "refused, yet changed";
    return e;
  };
  ModelConfig bigger = small();  // more experts: other shapes
  bigger.num_local_experts = 8;
  EXPECT_NE(refusal(bigger).find("model.safetensors: tensor 'model.layers.0.mlp.experts.down_proj' "
                                 "is [4, 16, 16] in the checkpoint and [8, 16, 16] in the model"),
            std::string::npos);
  ModelConfig no_bias = small();  // a tensor the model lacks
  no_bias.attention_bias = false;
  EXPECT_NE(
      refusal(no_bias).find("model.safetensors: tensor 'model.layers.0.self_attn.k_proj.bias' "
                            "[8] is not in the model"),
      std::string::npos);
  ModelConfig shallower = small();
  shallower.num_hidden_layers = 1;
  shallower.layer_sliding = {false};
  EXPECT_NE(refusal(shallower).find("tensor 'model.layers.1."), std::string::npos);
  ModelConfig theta = small();  // same shapes, another meaning
  theta.rope_theta = 10000;
  EXPECT_NE(refusal(theta).find("'rope_theta' is 150000.0 in the checkpoint and 10000.0 here"),
            std::string::npos);
  ModelConfig regrouped = small();  // 2 heads of 8 as 4 heads of 4: q and o keep their shapes
  regrouped.num_attention_heads = 4;
  regrouped.num_key_value_heads = 2;
  regrouped.head_dim = 4;
  EXPECT_NE(refusal(regrouped).find("'num_attention_heads' is 2"), std::string::npos);
  ModelConfig sliding = small();
  sliding.layer_sliding = {false, true};
  sliding.sliding_window = 8;
  EXPECT_NE(refusal(sliding).find("'layer_types[1]'"), std::string::npos);
  ModelConfig tied = small();  // a tied model has no lm_head: the checkpoint's would be lost
  tied.tie_word_embeddings = true;
  EXPECT_NE(refusal(tied).find("'tie_word_embeddings' is false in the checkpoint and true here"),
            std::string::npos);

  fs::remove(fs::path(dir) / "model.safetensors");
  const std::string e = refusal(small());
  EXPECT_NE(e.find(dir + ": no model.safetensors"), std::string::npos) << e;
  fs::remove(fs::path(dir) / "config.json");
  EXPECT_NE(refusal(small()).find(dir + ": not a checkpoint"), std::string::npos);
}

// MoE-CT over a checkpoint: the new experts start as copies of the loaded FFN (expert i from the
// layer's expert i mod E), the token gate at sigmoid(b) = lambda, the router random.
TEST(InitFrom, MoeCtExpertsCopyTheLoadedFfn) {
  RunDir run;
  Model<float> m(small(), 2, 16);
  m.init_weights(5);
  AdamW<float> opt(m.layout, AdamWConfig{});
  train_steps(m, opt, 2);
  const std::string dir = checkpoint_save(run.path, 2, m, opt, {}, 0);
  ModelConfig c = small();
  c.moe_ct.experts = 3;
  c.moe_ct.gate = CtGate::Token;
  c.moe_ct.lambda = 0.3;
  Model<float> to(c, 2, 16);
  to.init_weights(6);
  const InitReport r = checkpoint_init_from(dir, to);
  EXPECT_EQ(r.loaded.size(), m.layout.tensors.size());
  const int64_t E = small().num_local_experts;
  for (int64_t l = 0; l < c.num_hidden_layers; l++)
    for (const char* w : {"gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"}) {
      const TensorView* base = m.layout.find(fmt::format("model.layers.{}.mlp.experts.{}", l, w));
      const TensorView* ct = to.layout.find(fmt::format("model.layers.{}.mlp.ct.experts.{}", l, w));
      ASSERT_TRUE(base && ct) << w;
      const int64_t per = base->numel / E;
      for (int64_t i = 0; i < 3; i++)
        EXPECT_TRUE(same_bits(&to.params[size_t(ct->offset + i * per)],
                              &m.params[size_t(base->offset + (i % E) * per)], per))
            << l << " " << w << " expert " << i;
    }
  const TensorView* b = to.layout.find("model.layers.0.mlp.ct.gate.bias");
  ASSERT_NE(b, nullptr);
  EXPECT_NEAR(1.0 / (1.0 + std::exp(-double(to.params[size_t(b->offset)]))), 0.3, 1e-6);
  const TensorView* router = to.layout.find("model.layers.0.mlp.ct.router.weight");
  EXPECT_NE(to.params[size_t(router->offset)], 0.f);
}

// ----------------------------------------------------------------------------
// ZeRO-1: each of P optimizers keeps one shard of the moments and updates its parameters alone;
// the gather (simulated here: every rank's shard into one packed buffer, unpacked on every rank)
// leaves every rank with the parameters one unsharded optimizer computes, to the bit.

TEST(Zero, ShardedUpdatesGatherToTheUnshardedBits) {
  ParamLayout layout = wide_layout();
  layout.set_frozen("router|norm", true);  // holes between the trainable spans
  const int64_t n = trainable_numel(layout);
  for (int P : {2, 3, 5}) {
    const auto p0 = randn<float>(layout.total, 1);
    auto p_ref = p0;
    AdamW<float> ref(layout, AdamWConfig{});
    std::vector<std::vector<float>> p(size_t(P), p0);
    std::vector<AdamW<float>> opt(size_t(P), AdamW<float>(layout, AdamWConfig{}));
    int64_t kept = 0;
    for (int r = 0; r < P; r++) {
      opt[size_t(r)].set_shard(r, P);
      const auto [lo, hi] = opt[size_t(r)].shard_range(r);
      EXPECT_EQ(lo, kept);
      EXPECT_LE(hi - lo, n / P + 1);  // near-equal shards, element granularity
      EXPECT_EQ(int64_t(opt[size_t(r)].m.size()), hi - lo);
      kept = hi;
    }
    EXPECT_EQ(kept, n);
    std::vector<float> packed(static_cast<size_t>(n));  // [n] the gather's buffer
    for (int s = 0; s < 3; s++) {
      const auto g = randn<float>(n, 30 + uint64_t(s));
      ref.update(p_ref, g, 1e-2, 0.6);
      for (int r = 0; r < P; r++) {
        opt[size_t(r)].update(p[size_t(r)], g, 1e-2, 0.6);
        zero_pack_shard(opt[size_t(r)], p[size_t(r)], packed);
      }
      for (int r = 0; r < P; r++) zero_unpack(opt[size_t(r)], packed, p[size_t(r)]);
    }
    std::vector<float> m_all;
    for (int r = 0; r < P; r++) {
      EXPECT_TRUE(same_bits(p[size_t(r)].data(), p_ref.data(), layout.total)) << P << " " << r;
      m_all.insert(m_all.end(), opt[size_t(r)].m.begin(), opt[size_t(r)].m.end());
    }
    EXPECT_TRUE(same_bits(m_all.data(), ref.m.data(), n)) << P;
    EXPECT_FALSE(same_bits(p_ref.data(), p0.data(), layout.total));
  }
}

// A checkpoint holds whole moments: written from gathered shards of 3 ranks, it loads into 2
// shards, and into one optimizer, as the shards of the unsharded moments.
TEST(Zero, ACheckpointOfShardsLoadsAtAnyRankCount) {
  RunDir run;
  Model<float> m(small(), 2, 16);
  m.init_weights(4);
  m.layout.set_frozen("router", true);
  AdamW<float> ref(m.layout, AdamWConfig{});
  train_steps(m, ref, 2);
  const int64_t n = ref.packed_size();
  // three shards of ref's moments, gathered again as zero_gather_moments does on rank 0
  std::vector<AdamW<float>> shards(3, AdamW<float>(m.layout, AdamWConfig{}));
  std::vector<float> m_all, v_all;
  for (int r = 0; r < 3; r++) {
    AdamW<float>& o = shards[size_t(r)];
    o.set_shard(r, 3);
    const auto [lo, hi] = o.shard_range(r);
    std::copy(ref.m.begin() + lo, ref.m.begin() + hi, o.m.begin());
    std::copy(ref.v.begin() + lo, ref.v.begin() + hi, o.v.begin());
    m_all.insert(m_all.end(), o.m.begin(), o.m.end());
    v_all.insert(v_all.end(), o.v.begin(), o.v.end());
  }
  AdamW<float> gathered = shards[0];
  gathered.step = ref.step;
  gathered.unshard(m_all, v_all);
  EXPECT_NE(
      error_of([&] { checkpoint_save(run.path, 2, m, shards[1], {}, 0); }).find("gathered first"),
      std::string::npos);
  const std::string dir = checkpoint_save(run.path, 2, m, gathered, {}, 0);
  for (int P : {1, 2}) {
    for (int r = 0; r < P; r++) {
      Model<float> back(small(), 2, 16);
      back.layout.set_frozen("router", true);
      AdamW<float> o(back.layout, AdamWConfig{});
      o.set_shard(r, P);
      checkpoint_load(dir, back, &o);
      const auto [lo, hi] = o.shard_range(r);
      ASSERT_EQ(int64_t(o.m.size()), hi - lo);
      EXPECT_EQ(o.step, 2);
      EXPECT_TRUE(same_bits(o.m.data(), ref.m.data() + lo, hi - lo)) << P << " " << r;
      EXPECT_TRUE(same_bits(o.v.data(), ref.v.data() + lo, hi - lo)) << P << " " << r;
      EXPECT_EQ(hi - lo, P == 1 ? n : (r == 0 ? n / 2 : n - n / 2));
    }
  }
}
