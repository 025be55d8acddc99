#pragma once
// The file of `moelab study ct` (study/ct.hpp explains it): its [ct] section, the methods and the
// compressions, read and checked with one line per problem before anything runs.
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <toml++/toml.h>
#include <nlohmann/json.hpp>

#include "convert/compress.hpp"
#include "convert/upcycle.hpp"
#include "train/experiment.hpp"
#include "train/toml_file.hpp"

namespace moelab {

// full: every parameter trains; lora: adapters on the frozen base; moe-ct: new experts beside
// each frozen FFN; upcycle: the base made an MoE (vanilla or DeRS), everything training.
enum class CtKind { Full, Lora, MoeCt, Upcycle };
const char* ct_kind_name(CtKind k);

struct CtMethod {
  std::string name;
  // The [[ct.methods]] entry's own name: a method with a grid of rates (lr = [...]) runs once per
  // rate, as NAME-lrRATE, each of the family NAME.
  std::string family;
  double max_lr = 0;  // the rate of this member of the grid; 0: [schedule] max_lr
  CtKind kind = CtKind::Full;
  bool train_embeddings = false;       // moe-ct: the embeddings and the head train too
  UpcycleOptions upcycle;              // upcycle: the MoE made of the base (seed: the run's)
  const toml::table* table = nullptr;  // its [[ct.methods]] entry: lora, moe_ct, replay keys
};

// One [[ct.compress]] entry: the final checkpoint of method `from` compressed (DeRS), evaluated
// as the runs are (held-out losses, forgetting metrics), at every seed.
struct CtCompress {
  std::string name, from;
  std::string spec;         // as given: "sparse:0.9", "quant:2", "lowrank:4"
  CompressOptions options;  // base: "mean", or the study's base checkpoint (the dense FFN)
};

struct CtConfig {
  std::string source, run_dir = "runs/ct";
  std::string base, original, fresh;  // fresh: [ct] new
  int64_t steps = 0;
  std::vector<int64_t> seeds;
  std::vector<CtMethod> methods;
  std::vector<CtCompress> compress;
  // [ct] compare: pairs of methods (a name, or a family's name for its best rate) that the report
  // reads against each other at matched learning, besides each method against full CT.
  std::vector<std::array<std::string, 2>> compare;
  // An evaluation set built for the study when [eval] names none, as [study] builds one.
  std::string entities;
  double top = 50, bottom = 50;
  int64_t prompt = 32, target = 32, max_samples = 2000, max_per_entity = 5, entity_seed = 1;
};

// One run: a method at a seed, in RUN/<method>/seed_<s>.
struct CtRun {
  const CtMethod* method;
  int64_t seed;
  std::string dir;  // relative to RUN
  Experiment x;
};

// The file as parsed, with the --set overrides applied in order (study/ct.hpp, CtOptions).
toml::table ct_file_parse(const std::string& path, const std::vector<std::string>& overrides = {});
// The sections of a study file: an experiment's, less [model] and [[phases]] (which its own
// section `own` decides; model_why / phases_why say how), plus `own`, which is required.
void study_sections_check(const toml::table& root, const std::string& path, const std::string& own,
                          const std::string& model_why, const std::string& phases_why);
// The sections of a continual-training file: an experiment's, less what [ct] decides.
void ct_sections_check(const toml::table& root, const std::string& path);
// [ct]: the base, the two domains, the length, the seeds, the methods and the compressions.
CtConfig ct_config_read(const toml::table& root, const std::string& path);

}  // namespace moelab
