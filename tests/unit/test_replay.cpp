// The focused-stochasticity replay memory (docs/methods.md §5.4): draws are deterministic for a
// seed and uniform, a sample leaves after the exit limit, a bounded memory keeps a uniform sample
// of what it was offered, and the state round-trips through JSON so that a resumed memory draws
// what an unbroken one draws. Then the phase and [eval] keys that configure replay and filtering.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "test_util.hpp"
#include "train/experiment.hpp"
#include "train/replay.hpp"

using namespace moelab;
using moelab::test::error_of;

namespace {

ReplayMemory filled(uint64_t capacity, uint32_t exit_after, uint64_t seed, uint64_t n) {
  ReplayMemory m(capacity, exit_after, seed);
  for (uint64_t i = 0; i < n; i++) m.offer(uint32_t(i % 2), i);
  return m;
}

std::vector<uint64_t> sequences(const std::vector<ReplaySample>& v) {
  std::vector<uint64_t> out;
  for (const ReplaySample& s : v) out.push_back(s.sequence);
  return out;
}

}  // namespace

TEST(ReplayMemory, DrawsAreDeterministicForASeed) {
  ReplayMemory a = filled(64, 5, 7, 64), b = filled(64, 5, 7, 64), c = filled(64, 5, 8, 64);
  bool differs = false;
  for (int k = 0; k < 10; k++) {
    const auto da = a.draw(8), db = b.draw(8), dc = c.draw(8);
    EXPECT_EQ(sequences(da), sequences(db)) << "draw " << k;
    differs |= sequences(da) != sequences(dc);
  }
  EXPECT_TRUE(differs) << "another seed draws the same samples";
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); i++) {
    EXPECT_EQ(a.samples()[i].sequence, b.samples()[i].sequence);
    EXPECT_EQ(a.samples()[i].replays, b.samples()[i].replays);
  }
}

TEST(ReplayMemory, ADrawHoldsDistinctSamples) {
  ReplayMemory m = filled(32, 1000, 3, 32);
  for (int k = 0; k < 50; k++) {
    const auto d = sequences(m.draw(16));
    EXPECT_EQ(std::set<uint64_t>(d.begin(), d.end()).size(), 16u);
  }
  const auto all = sequences(m.draw(32));  // the whole memory
  EXPECT_EQ(std::set<uint64_t>(all.begin(), all.end()).size(), 32u);
  EXPECT_NE(error_of([&] { m.draw(33); }).find("a draw larger than the memory"), std::string::npos);
}

TEST(ReplayMemory, ASampleLeavesAfterTheExitLimit) {
  const uint32_t exit_after = 5;
  ReplayMemory m = filled(40, exit_after, 11, 40);
  std::map<uint64_t, uint32_t> replayed;
  while (m.size() >= 6) {
    for (const ReplaySample& s : m.draw(6)) {
      EXPECT_EQ(s.replays, ++replayed[s.sequence]) << "the count a draw returns";
      EXPECT_LE(s.replays, exit_after) << "sequence " << s.sequence << " replayed too often";
      // At the limit it has left; below it, it stays.
      EXPECT_EQ(m.contains(s.source, s.sequence), s.replays < exit_after);
    }
    for (const ReplaySample& s : m.samples()) EXPECT_EQ(s.replays, replayed[s.sequence]);
  }
  uint64_t at_limit = 0;
  for (const auto& [seq, n] : replayed) at_limit += n == exit_after;
  EXPECT_EQ(m.exited(), at_limit);
  EXPECT_EQ(m.size() + m.exited(), 40u);
  // A sequence that left is new again when it is trained on again (another epoch).
  const uint64_t gone = std::find_if(replayed.begin(), replayed.end(), [&](auto& p) {
                          return p.second == exit_after;
                        })->first;
  EXPECT_FALSE(m.contains(uint32_t(gone % 2), gone));
  EXPECT_TRUE(m.offer(uint32_t(gone % 2), gone));
}

TEST(ReplayMemory, DrawsAreUniform) {
  ReplayMemory m = filled(20, 1u << 30, 5, 20);
  std::map<uint64_t, int> n;
  for (int k = 0; k < 4000; k++)
    for (uint64_t s : sequences(m.draw(5))) n[s]++;
  // Each of 20 samples is in a draw of 5 with probability 1/4: 1000 of 4000, sd about 27.
  ASSERT_EQ(n.size(), 20u);
  for (const auto& [s, c] : n) EXPECT_NEAR(c, 1000, 150) << "sequence " << s;
}

TEST(ReplayMemory, ABoundedMemoryKeepsAUniformSample) {
  const uint64_t offered = 20000, capacity = 500;
  ReplayMemory m(capacity, 5, 13);
  for (uint64_t i = 0; i < offered; i++) m.offer(0, i);
  EXPECT_EQ(m.size(), capacity);
  EXPECT_EQ(m.offers(), offered);
  // Every offered sequence stays with probability capacity / offered: the kept ones spread over
  // the whole stream (mean near the middle, a quarter in each quarter, each within 5 sd).
  double mean = 0;
  std::vector<int> quarter(4);
  for (const ReplaySample& s : m.samples()) {
    mean += double(s.sequence) / double(capacity);
    quarter[size_t(s.sequence * 4 / offered)]++;
  }
  EXPECT_NEAR(mean, offered / 2.0, 5 * offered / std::sqrt(12.0 * capacity));
  for (int q : quarter) EXPECT_NEAR(q, 125, 5 * 9.7);
}

TEST(ReplayMemory, ASequenceIsHeldOnce) {
  ReplayMemory m(8, 5, 1);
  EXPECT_TRUE(m.offer(0, 4));
  EXPECT_TRUE(m.offer(0, 4));
  EXPECT_TRUE(m.offer(1, 4));  // another source: another sequence
  EXPECT_EQ(m.size(), 2u);
  EXPECT_EQ(m.offers(), 2u);
}

TEST(ReplayMemory, StateRoundTripsAndDrawsOnAsBefore) {
  const std::vector<std::string> sources = {"A", "B"};
  ReplayMemory a = filled(100, 3, 21, 300);  // past capacity: reservoir replacements happened
  for (int k = 0; k < 7; k++) a.draw(10);
  const nlohmann::json j = a.to_json(sources);
  // Through text, as a checkpoint stores it; the sources may come in another order there.
  ReplayMemory b(100, 3, 21);
  b.from_json(nlohmann::json::parse(j.dump(2)), {"B", "A"}, "state");
  EXPECT_EQ(b.size(), a.size());
  EXPECT_EQ(b.offers(), a.offers());
  EXPECT_EQ(b.draws(), a.draws());
  EXPECT_EQ(b.exited(), a.exited());
  for (int k = 0; k < 20; k++) {
    const auto da = a.draw(10), db = b.draw(10);
    ASSERT_EQ(da.size(), db.size());
    for (size_t i = 0; i < da.size(); i++) {
      EXPECT_EQ(da[i].sequence, db[i].sequence);
      EXPECT_EQ(sources[da[i].source], sources[1 - db[i].source]);
      EXPECT_EQ(da[i].replays, db[i].replays);
    }
    a.offer(0, 1000 + uint64_t(k)), b.offer(1, 1000 + uint64_t(k));
  }
  const std::vector<std::string> b_sources = {"B", "A"};
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); i++) {
    EXPECT_EQ(a.samples()[i].sequence, b.samples()[i].sequence);
    EXPECT_EQ(sources[a.samples()[i].source], b_sources[b.samples()[i].source]);
    EXPECT_EQ(a.samples()[i].replays, b.samples()[i].replays);
  }
}

TEST(ReplayMemory, StateRefusals) {
  ReplayMemory a = filled(10, 3, 1, 10);
  const nlohmann::json j = a.to_json({"A", "B"});
  auto load = [&](nlohmann::json s, uint64_t cap = 10, uint32_t ex = 3,
                  std::vector<std::string> src = {"A", "B"}) {
    return error_of([&] { ReplayMemory(cap, ex, 1).from_json(s, src, "ck"); });
  };
  EXPECT_EQ(load(j), "");
  EXPECT_EQ(load(j, 20),
            "ck: the memory was built with replay_memory = 10 and replay_exit = 3, the config now "
            "says 20 and 3");
  EXPECT_EQ(load(j, 10, 5),
            "ck: the memory was built with replay_memory = 10 and replay_exit = 3, the config now "
            "says 10 and 5");
  EXPECT_EQ(load(j, 10, 3, {"A", "C"}),
            "ck: the memory holds sequences of \"B\", not a subset of this run");
  nlohmann::json s = j;
  s["samples"] = "0:1:0 0:x:1";
  EXPECT_NE(load(s).find("'samples' is malformed"), std::string::npos);
  s["samples"] = "0:1:3";  // at the exit limit it would have left
  EXPECT_EQ(load(s), "ck: 'samples' holds an impossible entry 0:1:3");
  s["samples"] = "2:1:0";  // no third source
  EXPECT_EQ(load(s), "ck: 'samples' holds an impossible entry 2:1:0");
  s["samples"] = "0:1:0 0:1:1";
  EXPECT_EQ(load(s), "ck: 'samples' holds a sequence twice");
  s = j;
  s.erase("draws");
  EXPECT_EQ(load(s), "ck: 'draws' is missing or not a count");
}

// ----------------------------------------------------------------------------
// the keys

namespace {

std::string experiment_write(const std::string& name, const std::string& phase_b,
                             const std::string& extra = "") {
  const std::string path = (std::filesystem::temp_directory_path() / name).string();
  std::ofstream(path) << "[model]\nvocab_size = 64\nhidden_size = 16\nnum_attention_heads = 2\n"
                         "num_key_value_heads = 1\nhead_dim = 8\nintermediate_size = 16\n"
                         "max_position_embeddings = 32\n[data]\ndir = \"d\"\nseq_len = 8\n"
                         "[train]\nbatch_size = 4\ngrad_accum = 2\n"
                      << extra
                      << "\n[[phases]]\nname = \"A\"\nsubset = \"a\"\nsteps = 100\n"
                         "[[phases]]\nname = \"B\"\nsubset = \"b\"\nsteps = 50\n"
                      << phase_b << "\n";
  return path;
}

}  // namespace

TEST(Experiment, ReplayKeys) {
  const std::string p = experiment_write("moelab_replay_keys.toml", "replay = \"focused\"\n");
  const Experiment x = experiment_load(p, {});
  const PhaseConfig& b = x.phases[1];
  EXPECT_TRUE(b.focused());
  EXPECT_FALSE(x.phases[0].focused());  // "mix" by default
  EXPECT_EQ(b.replay_every, 100);       // the defaults of Liao et al.: 1% of the steps, exit 5
  EXPECT_EQ(b.replay_exit, 5);
  EXPECT_EQ(b.replay_repeat, 1);
  const Experiment y = experiment_load(
      p, {"phases.1.replay_every=10", "phases.1.replay_repeat=5", "phases.1.replay_subset=a",
          "phases.1.replay_memory=64", "phases.1.replay_exit=2"});
  EXPECT_EQ(y.phases[1].replay_every, 10);
  EXPECT_EQ(y.phases[1].replay_repeat, 5);
  EXPECT_EQ(y.phases[1].replay_subset, "a");
  EXPECT_EQ(y.phases[1].replay_memory, 64);
  EXPECT_EQ(y.phases[1].replay_exit, 2);

  auto err = [&](std::vector<std::string> sets) {
    return error_of([&] { experiment_load(p, sets); });
  };
  EXPECT_EQ(err({"phases.1.replay=often"}),
            p + ": 'phases[1].replay' must be \"mix\" or \"focused\"");
  EXPECT_EQ(err({"phases.1.replay_every=0"}),
            p + ": 'phases[1].replay_every' must be at least 1 (steps between replays)");
  EXPECT_EQ(err({"phases.1.replay_exit=0"}),
            p + ": 'phases[1].replay_exit' must be in [1, 2^30] (replays before a sample leaves "
                "the memory)");
  EXPECT_EQ(err({"phases.1.replay_repeat=0"}),
            p + ": 'phases[1].replay_repeat' must be in [1, 1000] (updates on each replay batch)");
  EXPECT_EQ(err({"phases.1.replay_memory=7"}),
            p + ": 'phases[1].replay_memory' must be in [8, 2^32] sequences: at least one batch "
                "(train.batch_size x train.grad_accum)");
  EXPECT_EQ(err({"phases.1.replay_ratio=0.2"}),
            p + ": 'phases[1].replay_ratio' applies to replay = \"mix\" only (focused replay: "
                "replay_every)");
  EXPECT_EQ(err({"phases.0.replay_every=10"}),
            p + ": 'phases[0].replay_every' applies to replay = \"focused\" only");
  EXPECT_EQ(err({"phases.1.replay_every=ten"}),
            p + ": 'phases[1].replay_every' must be an integer");
  std::filesystem::remove(p);
}

TEST(Experiment, FilterKeys) {
  const std::string p =
      experiment_write("moelab_filter_keys.toml", "", "[eval]\nevalset = \"e\"\n");
  const Experiment x = experiment_load(p, {});
  EXPECT_EQ(x.filter_at, "phase_end");
  EXPECT_EQ(x.filter_after, "A");
  EXPECT_EQ(x.min_recalled, 5);
  const Experiment y =
      experiment_load(p, {"eval.filter_at=start", "model.init_from=base", "eval.min_recalled=50"});
  EXPECT_EQ(y.filter_at, "start");
  EXPECT_EQ(y.min_recalled, 50);
  auto err = [&](std::vector<std::string> sets) {
    return error_of([&] { experiment_load(p, sets); });
  };
  EXPECT_EQ(err({"eval.filter_at=end"}),
            p + ": 'eval.filter_at' must be \"phase_end\" or \"start\"");
  EXPECT_EQ(err({"eval.filter_at=start"}),
            p + ": 'eval.filter_at' = \"start\" keeps what the model of 'model.init_from' recalls; "
                "give a base checkpoint there (a fresh model recalls nothing)");
  EXPECT_EQ(err({"eval.filter_at=start", "model.init_from=base", "eval.filter_after=A"}),
            p + ": 'eval.filter_after' applies to filter_at = \"phase_end\" only");
  EXPECT_EQ(err({"eval.min_recalled=-1"}),
            p + ": 'eval.min_recalled' must be >= 0 (0: never stop)");
  std::filesystem::remove(p);
}
