// Learning-rate schedules: values at the boundaries, continuity, and validation. The experiment
// config around them (the WSD decay at a phase's end, sections read one by one, [study] read by
// the study layer) and the trainer's step on micro-batches from any source.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "study/run.hpp"
#include "test_util.hpp"
#include "train/hook_forgetting.hpp"
#include "train/hook_replay.hpp"
#include "train/run_page.hpp"
#include "train/schedule.hpp"
#include "train/trainer.hpp"

using namespace moelab;
using moelab::test::error_of;

TEST(Schedule, WarmupThenConstant) {
  Schedule s{ScheduleKind::Constant, 1e-3, 0, 10};
  EXPECT_DOUBLE_EQ(s.lr(0), 1e-4);
  EXPECT_DOUBLE_EQ(s.lr(4), 5e-4);
  EXPECT_DOUBLE_EQ(s.lr(9), 1e-3);
  EXPECT_DOUBLE_EQ(s.lr(10000), 1e-3);
}

TEST(Schedule, CosineReachesMinAtTheEnd) {
  Schedule s{ScheduleKind::Cosine, 1e-3, 1e-4, 10, 110};
  EXPECT_DOUBLE_EQ(s.lr(10), 1e-3);
  EXPECT_NEAR(s.lr(60), 0.5 * (1e-3 + 1e-4), 1e-15);
  EXPECT_NEAR(s.lr(110), 1e-4, 1e-15);
  EXPECT_NEAR(s.lr(500), 1e-4, 1e-15);
  for (int64_t t = 11; t < 110; t++) EXPECT_LT(s.lr(t), s.lr(t - 1));
}

TEST(Schedule, WsdLikeTheOriginalStudy) {
  // methods.md §1.3: warmup 625, stable, cosine decay over 2384 steps from 3e-4 to 3e-5.
  Schedule s{ScheduleKind::Wsd, 3e-4, 3e-5, 625, 20000, 2384};
  s.validate("schedule");
  EXPECT_NEAR(s.lr(624), 3e-4, 1e-18);
  EXPECT_DOUBLE_EQ(s.lr(625), 3e-4);
  EXPECT_DOUBLE_EQ(s.lr(20000 - 2384 - 1), 3e-4);  // last stable step
  EXPECT_LT(s.lr(20000 - 2384), 3e-4);             // the decay starts moving at once
  EXPECT_NEAR(s.lr(20000 - 1), 3e-5, 1e-18);       // and ends at min_lr on the last step
  EXPECT_NEAR(s.lr(20000 - 2384 / 2 - 1), 0.5 * (3e-4 + 3e-5), 1e-7);
  // Largest step-to-step change is small: the schedule is continuous.
  double jump = 0;
  for (int64_t t = 1; t < 20000; t++) jump = std::max(jump, std::abs(s.lr(t) - s.lr(t - 1)));
  EXPECT_LT(jump, 3e-4 / 600);
  Schedule lin = s;
  lin.shape = DecayShape::Linear;
  EXPECT_NEAR(lin.lr(20000 - 2384 + 1191), 3e-4 - (3e-4 - 3e-5) * 1192.0 / 2384.0, 1e-15);
  Schedule at = s;  // decay placed explicitly (e.g. at the end of phase A)
  at.decay_start = 5000;
  EXPECT_DOUBLE_EQ(at.lr(4999), 3e-4);
  EXPECT_NEAR(at.lr(5000 + 2383), 3e-5, 1e-18);
  EXPECT_NEAR(at.lr(9000), 3e-5, 1e-18);
}

TEST(Schedule, ValidationNamesTheField) {
  EXPECT_NE(error_of([] {
              Schedule{ScheduleKind::Wsd, -1}.validate("s");
            }).find("'max_lr'"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              Schedule{ScheduleKind::Wsd, 1e-3, 1e-2}.validate("s");
            }).find("'min_lr'"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              Schedule{ScheduleKind::Cosine, 1e-3, 0, 10, 5}.validate("s");
            }).find("'total_steps'"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              Schedule{ScheduleKind::Wsd, 1e-3, 0, 100, 150, 100}.validate("s");
            }).find("before the warmup ends"),
            std::string::npos);
}

// ----------------------------------------------------------------------------
// the experiment config

namespace {

// An experiment file in the temporary folder, with the given sections after [data] and phases.
std::string experiment_write(const std::string& name, const std::string& extra) {
  const std::string path = (std::filesystem::temp_directory_path() / name).string();
  std::ofstream(path) << "[model]\nvocab_size = 64\nhidden_size = 16\nnum_attention_heads = 2\n"
                         "num_key_value_heads = 1\nhead_dim = 8\nintermediate_size = 16\n"
                         "max_position_embeddings = 32\n[data]\ndir = \"d\"\nseq_len = 8\n"
                      << extra
                      << "\n[[phases]]\nname = \"A\"\nsubset = \"a\"\nsteps = 100\n"
                         "[[phases]]\nname = \"B\"\nsubset = \"b\"\nsteps = 50\n";
  return path;
}

}  // namespace

TEST(Schedule, DecayAtThePhaseEndOfTheExperiment) {
  const std::string path = experiment_write(
      "moelab_sched_decay.toml",
      "[schedule]\nmax_lr = 1e-3\nmin_lr = 1e-4\ndecay_steps = 20\ndecay_at = \"phase:A\"\n");
  const Experiment x = experiment_load(path, {});
  EXPECT_EQ(x.schedule.total_steps, 150);
  EXPECT_EQ(x.schedule.decay_start, 80);
  EXPECT_DOUBLE_EQ(x.schedule.lr(79), 1e-3);
  EXPECT_NEAR(x.schedule.lr(99), 1e-4, 1e-18);  // the decay ends with phase A
  EXPECT_NEAR(x.schedule.lr(149), 1e-4, 1e-18);
  EXPECT_EQ(experiment_load(path, {"schedule.decay_at=\"60\""}).schedule.decay_start, 60);
  std::filesystem::remove(path);
}

TEST(Experiment, SectionsAreReadKeyByKey) {
  const nlohmann::json t = {{"n", 3}, {"f", 2.5}, {"s", "x"}, {"l", {"a", "b"}}, {"odd", true}};
  ConfigSection sec(&t, "train", "e.toml");
  int64_t n = 0;
  double f = 0, n_as_f = 0;
  std::string str;
  std::vector<std::string> l;
  sec.get("n", n);
  sec.get("n", n_as_f);  // an integer is a number too
  sec.get("f", f);
  sec.get("s", str);
  sec.get("l", l);
  sec.get("absent", n);  // absent: left as it is
  EXPECT_EQ(n, 3);
  EXPECT_EQ(n_as_f, 3.0);
  EXPECT_EQ(f, 2.5);
  EXPECT_EQ(str, "x");
  EXPECT_EQ(l, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(error_of([&] { sec.finish(); }), "e.toml: unknown key 'train.odd'");
  EXPECT_EQ(error_of([&] { sec.get("f", n); }), "e.toml: 'train.f' must be an integer");
  EXPECT_EQ(error_of([&] { sec.get("s", f); }), "e.toml: 'train.s' must be a number");
  EXPECT_EQ(error_of([&] { sec.get("n", l); }), "e.toml: 'train.n' must be an array of strings");
  bool b = false;
  sec.get("odd", b);
  EXPECT_TRUE(b);
  EXPECT_EQ(error_of([&] { sec.finish(); }), "");
}

TEST(Experiment, InitFromAndFreezeKeys) {
  const std::string path = experiment_write(
      "moelab_init_freeze.toml", "[train]\nfreeze = [\"embed\", \"layers\\\\.0\\\\.\"]\n");
  const Experiment x = experiment_load(path, {"model.init_from=runs/a/step_00000100"});
  EXPECT_EQ(x.init_from, "runs/a/step_00000100");
  EXPECT_EQ(x.freeze, (std::vector<std::string>{"embed", "layers\\.0\\."}));
  EXPECT_EQ(error_of([&] { experiment_load(path, {"train.freeze=[\"a(\"]"}); }),
            path + ": 'train.freeze' pattern 'a(' is not a valid regular expression");
  EXPECT_EQ(error_of([&] { experiment_load(path, {"model.init_from=3"}); }),
            path + ": 'model.init_from' must be a string");
  std::filesystem::remove(path);
}

// The trainer accepts [study] without reading it; the study layer reads and checks it.
TEST(Experiment, StudySectionBelongsToTheStudyLayer) {
  const std::string path =
      experiment_write("moelab_study_section.toml", "[study]\nexperts = [1, 4]\nexpert = 3\n");
  const Experiment x = experiment_load(path, {});
  ASSERT_TRUE(x.sections_above.contains("study"));
  EXPECT_EQ(error_of([&] { study_config_load(x); }), path + ": unknown key 'study.expert'");
  const Experiment y = experiment_load(path, {"study.expert=", "study.top_k=0"});
  EXPECT_EQ(error_of([&] { study_config_load(y); }), path + ": unknown key 'study.expert'");
  const std::string clean =
      experiment_write("moelab_study_clean.toml", "[study]\nexperts = [1, 4]\ntop_k = 3\n");
  const StudyConfig sc = study_config_load(experiment_load(clean, {}));
  EXPECT_EQ(sc.experts, (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(sc.top_k, 3);
  EXPECT_EQ(sc.subset_a, "a");  // the first two phases' subsets
  EXPECT_EQ(sc.subset_b, "b");
  EXPECT_EQ(error_of([&] { study_config_load(experiment_load(clean, {"study.top_k=0"})); }),
            clean + ": 'study.top_k' must be >= 1");
  std::filesystem::remove(path);
  std::filesystem::remove(clean);
}

// ----------------------------------------------------------------------------
// the trainer's step

namespace {

Experiment tiny_experiment() {
  Experiment x;
  x.source = "tiny";
  x.model.vocab_size = 32;
  x.model.hidden_size = 16;
  x.model.num_hidden_layers = 2;
  x.model.num_attention_heads = 2;
  x.model.num_key_value_heads = 1;
  x.model.head_dim = 8;
  x.model.intermediate_size = 16;
  x.model.ffn_type = FfnKind::Moe;
  x.model.num_local_experts = 4;
  x.model.num_experts_per_tok = 2;
  x.model.max_position_embeddings = 16;
  x.model.layer_sliding = {false, false};
  x.batch_size = 2, x.seq_len = 8, x.grad_accum = 2;
  x.seed = 9;
  return x;
}

}  // namespace

TEST(Trainer, StepTakesItsMicroBatchesFromTheSource) {
  const Experiment x = tiny_experiment();
  std::vector<int32_t> tok(16), tgt(16);
  for (size_t i = 0; i < tok.size(); i++) tok[i] = int32_t(i * 7 % 32), tgt[i] = int32_t(i % 32);
  // The same micro-batch twice: the mean loss is its loss, the mean gradient its gradient.
  Model<float> ref(x.model, x.batch_size, x.seq_len);
  ref.init_weights(x.seed);
  const Losses l = ref.forward(tok, tgt);
  Trainer t(x);
  std::vector<int64_t> asked;
  const BatchSource same = [&](int64_t micro) {
    asked.push_back(micro);
    return MicroBatch{tok, tgt};
  };
  const StepStats r = t.step(same, 1e-3);
  EXPECT_EQ(asked, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(r.step, 1);
  EXPECT_TRUE(r.applied);
  EXPECT_DOUBLE_EQ(r.lm, l.lm);
  EXPECT_NEAR(r.aux, l.aux, 1e-12);
  EXPECT_EQ(r.expert_load.size(), 2u);      // per layer, of the last micro-batch
  EXPECT_NE(t.model().params, ref.params);  // the update was applied
}

// A hook's extra update (focused replay's) trains like a step but is not one of the run's.
TEST(Trainer, UpdateIsNotCountedAsAStep) {
  const Experiment x = tiny_experiment();
  std::vector<int32_t> tok(16), tgt(16);
  for (size_t i = 0; i < tok.size(); i++) tok[i] = int32_t(i * 3 % 32), tgt[i] = int32_t(i % 32);
  const BatchSource same = [&](int64_t) { return MicroBatch{tok, tgt}; };
  Trainer t(x), u(x);
  const StepStats extra = t.update(same, 1e-3);
  EXPECT_EQ(extra.step, 0);
  EXPECT_EQ(t.steps_done(), 0);
  EXPECT_TRUE(extra.applied);
  EXPECT_NE(t.model().params, u.model().params);  // the update was applied
  EXPECT_EQ(u.step(same, 1e-3).lm, extra.lm);     // on the same weights, the same loss
  EXPECT_EQ(t.step(same, 1e-3).step, 1);
}

// The hooks an experiment asks for: focused replay only with a focused phase, before the
// forgetting evaluation (their metrics fields come in this order), and the run's page last, so
// that it shows what the step's other hooks logged.
TEST(Trainer, HooksFromExperiment) {
  Experiment x = tiny_experiment();
  x.phases = {PhaseConfig{.name = "A", .subset = "A", .steps = 4},
              PhaseConfig{.name = "B", .subset = "B", .steps = 4}};
  const TrainerHooks plain = trainer_hooks_from_experiment(x);
  ASSERT_EQ(plain.size(), 2u);
  EXPECT_NE(dynamic_cast<ForgettingHook*>(plain[0].get()), nullptr);
  EXPECT_NE(dynamic_cast<RunPageHook*>(plain[1].get()), nullptr);
  x.phases[1].replay = "focused";
  const TrainerHooks focused = trainer_hooks_from_experiment(x);
  ASSERT_EQ(focused.size(), 3u);
  EXPECT_NE(dynamic_cast<ReplayHook*>(focused[0].get()), nullptr);
  EXPECT_NE(dynamic_cast<ForgettingHook*>(focused[1].get()), nullptr);
  EXPECT_NE(dynamic_cast<RunPageHook*>(focused[2].get()), nullptr);
}

TEST(Trainer, FrozenTensorsStayBitIdentical) {
  Experiment x = tiny_experiment();
  x.freeze = {"embed_tokens", "layers\\.1\\.mlp\\.router"};
  std::vector<int32_t> tok(16), tgt(16);
  for (size_t i = 0; i < tok.size(); i++) tok[i] = int32_t(i * 5 % 32), tgt[i] = int32_t(i % 32);
  Trainer t(x);
  const std::vector<float> before = t.model().params;
  const BatchSource same = [&](int64_t) { return MicroBatch{tok, tgt}; };
  for (int i = 0; i < 3; i++) t.step(same, 1e-2);
  int frozen = 0;
  for (const TensorView& v : t.model().layout.tensors) {
    const bool equal = std::equal(before.begin() + v.offset, before.begin() + v.offset + v.numel,
                                  t.model().params.begin() + v.offset);
    EXPECT_EQ(equal, v.frozen) << v.name;
    frozen += v.frozen;
  }
  EXPECT_EQ(frozen, 3);  // the embedding, layer 1's router weight and bias
  x.freeze = {"lora"};
  EXPECT_EQ(error_of([&] { Trainer u(x); }),
            "tiny: 'train.freeze' pattern 'lora' matches no tensor of the model (names as in "
            "Hugging Face GptOss, e.g. model.layers.0.mlp.router.weight)");
}
