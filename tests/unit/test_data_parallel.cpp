// Data-parallel gradient buckets (train/data_parallel) against a stand-in transport that acts as
// two identical ranks (every sum doubles): each gradient is summed exactly once, layer l's
// bucket holds exactly layer l's tensors and is started when its backward ends, in the order
// every rank uses; overlap off starts everything at the end in the same order.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "model/model.hpp"
#include "tiny_config.hpp"
#include "train/data_parallel.hpp"

using namespace moelab;

namespace {

class Doubling final : public Collective {
 public:
  int rank() const override { return 0; }
  int size() const override { return 2; }
  void sum_start(std::span<float> d) override { started.push_back(d); }
  void progress() override {}
  void wait_sums() override {
    for (auto d : started)
      for (float& x : d) x *= 2;
    done += started.size(), started.clear();
  }
  void sum(std::span<double> d) override {
    for (double& x : d) x *= 2;
  }
  void sum(std::span<int64_t> d) override {
    for (int64_t& x : d) x *= 2;
  }
  void same(const std::string&, uint64_t) override {}
  // identical ranks: every block already holds what the other rank would send
  void gather_all(std::span<float>, std::span<const int64_t>) override {}
  void gather_root(std::span<const float>, std::span<float>, std::span<const int64_t>) override {
    ADD_FAILURE() << "no moments are gathered here";
  }
  std::vector<std::span<float>> started;
  size_t done = 0;
};

}  // namespace

TEST(DataParallel, EveryGradientIsSummedOnceInLayerBuckets) {
  for (bool lora : {false, true}) {
    ModelConfig c = test::tiny(true);
    if (lora) c.lora = {.rank = 2, .alpha = 0, .targets = {"self_attn\\.(q|v)_proj"}};
    Model<float> m(c, 1, 4);
    // with adapters the base is frozen: its tensors have no gradient, and none is sent
    if (lora) m.layout.set_frozen("^(?!.*lora_)", true);
    m.zero_grad();
    int64_t trainable = 0;
    for (const TensorView& t : m.layout.tensors) trainable += t.frozen ? 0 : t.numel;
    ASSERT_EQ(int64_t(m.grads.size()), trainable);
    if (lora) {
      ASSERT_LT(trainable, m.layout.total / 4);
    }
    for (size_t i = 0; i < m.grads.size(); i++) m.grads[i] = float(i % 97) + 1;
    const std::vector<float> before = m.grads;
    Doubling comm;
    GradSync sync(m.layout, std::span<float>(m.grads), c.num_hidden_layers, comm);
    EXPECT_EQ(sync.bytes(), trainable * 4);
    // the backward pass reports the layers from the last, then the rest
    for (int64_t l = c.num_hidden_layers - 1; l >= -1; l--) {
      const size_t before_started = comm.started.size();
      sync.ready(l);
      // with the base frozen the rest (embedding, head, final norm) has nothing to sum
      if (!lora || l >= 0)
        ASSERT_GT(comm.started.size(), before_started) << "layer " << l << " started nothing";
      else
        ASSERT_EQ(comm.started.size(), before_started) << "a frozen tensor's gradient was sent";
      for (size_t k = before_started; k < comm.started.size(); k++) {
        const int64_t lo = comm.started[k].data() - m.grads.data();
        for (size_t i = 0; i < m.layout.tensors.size(); i++) {  // only layer l's tensors
          const TensorView& t = m.layout.tensors[i];
          const int64_t at = m.grad_layout.at[i];  // packed offset
          if (at >= lo && at < lo + int64_t(comm.started[k].size())) {
            const std::string want = l >= 0 ? "model.layers." + std::to_string(l) + "." : "";
            if (l >= 0)
              EXPECT_EQ(t.name.rfind(want, 0), 0u) << t.name << " in layer " << l << "'s bucket";
            else
              EXPECT_NE(t.name.rfind("model.layers.", 0), 0u) << t.name << " in the rest";
          }
        }
      }
    }
    sync.finish();
    for (size_t i = 0; i < m.grads.size(); i++)
      ASSERT_EQ(m.grads[i], 2 * before[i]) << "element " << i << " summed not exactly once";
    // overlap off: nothing starts during backward, everything at the end, once
    sync.overlap = false;
    for (int64_t l = c.num_hidden_layers - 1; l >= -1; l--) sync.ready(l);
    EXPECT_TRUE(comm.started.empty());
    sync.finish();
    for (size_t i = 0; i < m.grads.size(); i++) ASSERT_EQ(m.grads[i], 4 * before[i]);
  }
}
