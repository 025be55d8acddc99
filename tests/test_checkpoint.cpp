// Checkpoints: exact round trips of weights and optimizer state, keep-last, an interrupted write
// (the temporary folder a kill -9 leaves) never counts, and a mismatching config is refused.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "test_util.hpp"
#include "train/checkpoint.hpp"

using namespace moelab;
using moelab::test::error_of;
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
  c.ffn_type = FfnType::Moe;
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
