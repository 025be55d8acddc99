#pragma once
// Entity evaluation sets (docs/methods.md §2.1-2.2): count every entity in subsets A and B on token
// ids, take C = the top p% by frequency in A that are also in the bottom q% by frequency in B, and
// cut windows around C's occurrences in A: the prompt ending with the entity (M_in), the prompt
// just before it (M_ex) and the true continuation.
#include <cstdint>
#include <string>
#include <vector>

namespace moelab {

struct EntityBuildOptions {
  std::string data_dir, entities, out;
  std::string subset_a = "A", subset_b = "B";
  double top_a = 50, bottom_b = 50;  // percent
  int64_t prompt = 32, target = 32;
  int64_t max_samples = 2000, max_per_entity = 5;
  uint64_t seed = 1;
};

struct EvalSample {
  int32_t entity = 0;              // index into EvalSet::names
  std::string surface;             // the entity as written at this occurrence (for M_ex)
  std::vector<int32_t> in_prompt;  // [prompt] tokens ending with the entity
  std::vector<int32_t> ex_prompt;  // [prompt] tokens just before the entity
  std::vector<int32_t> target;     // [target] tokens after the entity
};

struct EvalSet {
  uint64_t fingerprint = 0;
  std::string subset = "A";
  std::vector<std::string> names, types;
  std::vector<EvalSample> samples;
};

// Which entities form C, given their counts in A and B. Only entities seen in A take part;
// ranks break ties by list order. top_a / bottom_b in percent.
std::vector<bool> entity_select(const std::vector<int64_t>& count_a,
                                const std::vector<int64_t>& count_b, double top_a, double bottom_b);

// Builds and writes the evaluation set (JSON lines) and OUT.summary.json; prints the summary.
void entities_build(const EntityBuildOptions& o);

// Writes an evaluation set (JSON lines, atomically); header fields from the set.
void evalset_write(const std::string& path, const EvalSet& set);

// What the loader checks a set against; 0: unchecked.
struct EvalSetLimits {
  int64_t tokenizer_vocab = 0;  // every id below it: the tokenizer decodes the set's ids
  int64_t model_vocab = 0;      // and below this: the model embeds them
  int64_t max_positions = 0;    // prompt + target within the model's positions
};

// Reads an evaluation set and validates all of it before anything uses it: the header (format,
// version, fingerprint of this tokenizer, prompt and target lengths), and per sample the entity,
// its type and surface, and every token list (a list of integer ids, the header's length, each id
// in [0, the smaller vocabulary)). Refuses the first fault with one line "PATH:LINE: field ...".
EvalSet evalset_load(const std::string& path, uint64_t expected_fingerprint,
                     const EvalSetLimits& limits = {});

struct EvalMetrics {
  double m_in = 0, m_ex = 0, m_f = 0, ppl_ent = 0;
  int64_t samples = 0;
};
struct EvalReport {
  EvalMetrics all;
  std::vector<std::pair<std::string, EvalMetrics>> per_type;
  std::vector<bool> ex_hit;  // per sample: M_ex = 1
};

// The samples of `set` whose M_ex was 1 in `report` (the set frozen after phase A).
EvalSet evalset_filter(const EvalSet& set, const std::vector<bool>& keep);

}  // namespace moelab

#include <nlohmann/json.hpp>

#include "data/tokenizer.hpp"
#include "model/model.hpp"

namespace moelab {

// {samples, m_in, m_ex, m_f, ppl_ent, per_type: {TYPE: {...}}}
nlohmann::ordered_json evalreport_json(const EvalReport& r);
// The same fields for a set with no samples (the model recalled none of the candidates): the
// metrics are undefined, null, with samples 0 and no types. evaluate() refuses such a set.
nlohmann::ordered_json evalreport_undefined_json();

// M_in, M_ex, M(f) and PPL_ent of a model on an evaluation set (methods.md §2.3-2.7): greedy
// decoding of target-length continuations from both prompts with the KV cache, and teacher forcing
// over the true continuation for M(f) and PPL_ent. `tok` decodes continuations for M_ex. A model
// vocabulary may be padded beyond the tokenizer's (gpt-oss pads o200k): greedy tokens and the
// top-1 of M(f) are then the argmax over the ids the tokenizer has, while PPL_ent keeps the
// model's whole distribution. The set's shapes and ids are checked first (a set built in code
// bypasses the loader).
EvalReport evaluate(const Model<float>& model, const Tokenizer& tok, const EvalSet& set,
                    int64_t batch);

}  // namespace moelab
