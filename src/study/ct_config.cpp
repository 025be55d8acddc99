#include "study/ct_config.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <regex>
#include <set>

#include "core/error.hpp"
#include "train/toml_file.hpp"

namespace moelab {

using json = nlohmann::json;

const char* ct_kind_name(CtKind k) {
  switch (k) {
    case CtKind::Full:
      return "full";
    case CtKind::Lora:
      return "lora";
    case CtKind::MoeCt:
      return "moe-ct";
    default:
      return "upcycle";
  }
}

toml::table ct_file_parse(const std::string& path, const std::vector<std::string>& overrides) {
  toml::table root = toml_file_parse(path);
  for (const std::string& kv : overrides) {
    experiment_override_apply(root, kv);
  }
  return root;
}

void study_sections_check(const toml::table& root, const std::string& path, const std::string& own,
                          const std::string& model_why, const std::string& phases_why) {
  static const std::set<std::string> experiment = {"run",      "data",       "train", "optimizer",
                                                   "schedule", "checkpoint", "eval"};
  for (const auto& [k, v] : root) {
    const std::string key(k.str());
    if (key == "model") fail(fmt::format("{}: {}", path, model_why));
    if (key == "phases") fail(fmt::format("{}: {}", path, phases_why));
    if (!experiment.contains(key) && key != own)
      fail(fmt::format("{}: unknown section '{}'", path, key));
    if (!v.is_table()) fail(fmt::format("{}: '{}' must be a table", path, key));
  }
  if (!root.contains(own)) fail(fmt::format("{}: no [{}] section", path, own));
}

void ct_sections_check(const toml::table& root, const std::string& path) {
  study_sections_check(root, path, "ct",
                       "[model] comes from 'ct.base' (the checkpoint's config.json); give a "
                       "method's additions (lora, moe_ct) in its [[ct.methods]] entry",
                       "[[phases]] come from [ct]: one phase on 'ct.new' for 'ct.steps' steps, "
                       "replaying 'ct.original' as each method asks");
}

namespace {

// A method's `upcycle` table: the options of `moelab upcycle` (delta as its --delta string).
UpcycleOptions upcycle_read(const json& t, const std::string& at, const std::string& path) {
  UpcycleOptions o;
  ConfigSection s(&t, at, path);
  std::string delta = "none";
  s.get("experts", o.experts);
  s.get("top_k", o.top_k);
  s.get("layers", o.layers);
  s.get("granularity", o.granularity);
  s.get("universal_ffn", o.universal_ffn);
  s.get("delta", delta);
  s.finish();
  try {
    o.ders = upcycle_parse_delta(delta);
  } catch (const Error& e) {
    s.bad("delta", e.what());
  }
  return o;
}

// One [[ct.compress]] entry; `from` must name a method.
CtCompress compress_read(const json& t, size_t i, const CtConfig& c) {
  CtCompress k;
  ConfigSection s(&t, fmt::format("ct.compress[{}]", i), c.source);
  std::string base = "dense", select;
  int64_t seed = -1;
  s.get("name", k.name);
  s.get("from", k.from);
  s.get("delta", k.spec);
  s.get("base", base);
  s.get("select", select);
  s.get("seed", seed);
  s.finish();
  static const std::regex folder_name("[A-Za-z0-9][A-Za-z0-9._-]*");
  if (!std::regex_match(k.name, folder_name))
    s.bad("name", fmt::format("\"{}\" must be a folder name (letters, digits, . _ -)", k.name));
  if (std::none_of(c.methods.begin(), c.methods.end(),
                   [&](const CtMethod& m) { return m.name == k.from; }))
    s.bad("from", fmt::format("\"{}\" is not the name of a method", k.from));
  try {
    k.options.ders = compress_parse_delta(k.spec);
  } catch (const Error& e) {
    s.bad("delta", e.what());
  }
  if (base != "dense" && base != "mean")
    s.bad("base", "must be \"dense\" (the study's base checkpoint) or \"mean\"");
  k.options.base = base == "dense" ? c.base : "mean";
  k.options.ders.base = base;
  if (!select.empty() || seed >= 0) {
    if (k.options.ders.delta != DeltaKind::Sparse)
      s.bad(select.empty() ? "seed" : "select", "is only for a sparse delta");
    if (!select.empty() && select != "random" && select != "topk")
      s.bad("select", "must be \"random\" or \"topk\"");
    k.options.ders.topk = select == "topk";
    if (seed >= 0) k.options.ders.seed = uint64_t(seed);
    k.options.select_given = true;
  }
  return k;
}

// One [[ct.methods]] entry. Keys starting with "replay" belong to the phase and pass through
// unread (the experiment's phase parser checks them).
CtMethod method_read(const toml::table& t, size_t i, const std::string& path,
                     std::vector<double>& m_rates) {
  CtMethod m;
  m.table = &t;
  const std::string at = fmt::format("ct.methods[{}]", i);
  json j = toml_to_json(t);
  std::string kind;
  for (auto it = j.begin(); it != j.end();)
    it = it.key().rfind("replay", 0) == 0 ? j.erase(it) : std::next(it);
  const json lora = j.contains("lora") ? j["lora"] : json(), moe = j.value("moe_ct", json());
  const json up = j.value("upcycle", json());
  j.erase("lora"), j.erase("moe_ct"), j.erase("upcycle");
  ConfigSection s(&j, at, path);
  if (j.contains("lr") && j["lr"].is_number()) {
    j["lr"] = json::array({j["lr"]});
  }
  s.get("lr", m_rates);
  s.get("name", m.name);
  s.get("kind", kind);
  s.get("train_embeddings", m.train_embeddings);
  s.finish();
  static const std::regex folder_name("[A-Za-z0-9][A-Za-z0-9._-]*");
  if (m.name.empty()) s.bad("name", "is required");
  if (!std::regex_match(m.name, folder_name) || m.name == "report")
    s.bad("name",
          fmt::format("\"{}\" must be a folder name (letters, digits, . _ -), not report", m.name));
  if (kind == "full")
    m.kind = CtKind::Full;
  else if (kind == "lora")
    m.kind = CtKind::Lora;
  else if (kind == "moe-ct")
    m.kind = CtKind::MoeCt;
  else if (kind == "upcycle")
    m.kind = CtKind::Upcycle;
  else
    s.bad("kind",
          fmt::format("\"{}\" must be \"full\", \"lora\", \"moe-ct\" or \"upcycle\"", kind));
  if (m.kind == CtKind::Upcycle) {
    if (!up.is_object())
      s.bad("upcycle", "is required for kind \"upcycle\" (a table: experts, top_k, layers, ...)");
    m.upcycle = upcycle_read(up, at + ".upcycle", path);
  } else if (!up.is_null()) {
    s.bad("upcycle", "is only for kind \"upcycle\"");
  }
  if (m.kind == CtKind::Lora) {
    if (!lora.is_object())
      s.bad("lora", "is required for kind \"lora\" (a table: rank, alpha, targets)");
    if (!lora.contains("rank") || !lora["rank"].is_number_integer() || lora["rank"] < 1)
      s.bad("lora.rank", "must be an integer >= 1");
  } else if (!lora.is_null()) {
    s.bad("lora", "is only for kind \"lora\"");
  }
  if (m.kind == CtKind::MoeCt) {
    if (!moe.is_object())
      s.bad("moe_ct", "is required for kind \"moe-ct\" (a table: experts, top_k, gate, ...)");
  } else if (!moe.is_null()) {
    s.bad("moe_ct", "is only for kind \"moe-ct\"");
  }
  if (m.train_embeddings && m.kind != CtKind::MoeCt)
    s.bad("train_embeddings", "is only for kind \"moe-ct\" (full trains them, lora freezes them)");
  for (double rate : m_rates) {
    if (!(rate > 0) || !std::isfinite(rate)) {
      s.bad("lr", "must be a positive learning rate or a list of them");
    }
  }
  if (std::set<double>(m_rates.begin(), m_rates.end()).size() != m_rates.size()) {
    s.bad("lr", "lists a rate twice");
  }
  m.family = m.name;
  return m;
}

// [ct] compare = [["a", "b"], ...]: each name a method's (a run of a grid, "moe-ct-lr0.001")
// or a family's ("moe-ct": its best rate, chosen by the report).
void compare_read(const json& list, CtConfig& c, const ConfigSection& s) {
  if (!list.is_array()) {
    s.bad("compare", "must be a list of pairs of method names, e.g. [[\"moe-ct\", \"full\"]]");
  }
  for (size_t i = 0; i < list.size(); i++) {
    const json& pair = list[i];
    const std::string at = fmt::format("compare[{}]", i);
    if (!pair.is_array() || pair.size() != 2 || !pair[0].is_string() || !pair[1].is_string()) {
      s.bad(at, "must be a pair of method names, e.g. [\"moe-ct\", \"full\"]");
    }
    const std::array<std::string, 2> names = {pair[0].get<std::string>(),
                                              pair[1].get<std::string>()};
    for (const std::string& name : names) {
      const bool known = std::any_of(c.methods.begin(), c.methods.end(), [&](const CtMethod& m) {
        return m.name == name || m.family == name;
      });
      if (!known) {
        s.bad(at, fmt::format("\"{}\" is not the name of a method or of a family of rates", name));
      }
    }
    if (names[0] == names[1]) {
      s.bad(at, "compares a method with itself");
    }
    c.compare.push_back(names);
  }
}

}  // namespace

CtConfig ct_config_read(const toml::table& root, const std::string& path) {
  CtConfig c;
  c.source = path;
  // [run] dir and seed are read here too (each run gets its own): their types are checked first.
  const json run = root.contains("run") ? toml_to_json(*root.get("run")) : json();
  ConfigSection run_section(&run, "run", path);
  int64_t seed = 0;
  run_section.get("dir", c.run_dir);
  run_section.get("seed", seed);
  const toml::table& ct = *root["ct"].as_table();
  json j = toml_to_json(ct);
  const json compare = j.contains("compare") ? j["compare"] : json::array();
  j.erase("methods"), j.erase("compress"), j.erase("compare");
  ConfigSection s(&j, "ct", path);
  s.get("base", c.base);
  s.get("original", c.original);
  s.get("new", c.fresh);
  s.get("steps", c.steps);
  s.get("seeds", c.seeds);
  s.get("entities", c.entities);
  s.get("top", c.top);
  s.get("bottom", c.bottom);
  s.get("prompt", c.prompt);
  s.get("target", c.target);
  s.get("max_samples", c.max_samples);
  s.get("max_per_entity", c.max_per_entity);
  s.get("entity_seed", c.entity_seed);
  s.finish();
  if (c.base.empty()) s.bad("base", "is required (a checkpoint folder, e.g. RUN/step_00000400)");
  if (c.original.empty()) s.bad("original", "is required (the subset the base was trained on)");
  if (c.fresh.empty()) s.bad("new", "is required (the subset to train on)");
  if (c.fresh == c.original) s.bad("new", "must differ from 'ct.original'");
  if (c.steps < 1) s.bad("steps", "must be >= 1");
  if (std::any_of(c.seeds.begin(), c.seeds.end(), [](int64_t x) { return x < 0; }))
    s.bad("seeds", "must be >= 0");
  const toml::array* methods = ct["methods"].as_array();
  if (!methods || methods->empty() || !methods->is_array_of_tables())
    s.bad("methods", "must list the methods as [[ct.methods]] tables (name, kind, ...)");
  for (size_t i = 0; i < methods->size(); i++) {
    std::vector<double> rates;
    const CtMethod read = method_read(*methods->get(i)->as_table(), i, path, rates);
    // One run per rate of a grid (lr = [...]), each named for its rate; one rate sets the method's.
    std::vector<CtMethod> members;
    for (double rate : rates) {
      CtMethod m = read;
      m.max_lr = rate;
      if (rates.size() > 1) {
        m.name = fmt::format("{}-lr{:g}", read.name, rate);
      }
      members.push_back(m);
    }
    if (members.empty()) {
      members.push_back(read);
    }
    for (const CtMethod& m : members) {
      for (const CtMethod& other : c.methods)
        if (other.name == m.name || other.family == m.family)
          fail(fmt::format("{}: 'ct.methods[{}].name' \"{}\" is already the name of another method",
                           path, i, m.family));
    }
    c.methods.insert(c.methods.end(), members.begin(), members.end());
  }
  compare_read(compare, c, s);
  if (const toml::node* list = ct.get("compress")) {
    const toml::array* a = list->as_array();
    if (!a || !a->is_array_of_tables())
      s.bad("compress", "must list the compressions as [[ct.compress]] tables (name, from, delta)");
    for (size_t i = 0; i < a->size(); i++) {
      CtCompress k = compress_read(toml_to_json(*a->get(i)), i, c);
      for (const CtCompress& other : c.compress)
        if (other.name == k.name)
          fail(fmt::format("{}: 'ct.compress[{}].name' \"{}\" is already taken", path, i, k.name));
      c.compress.push_back(std::move(k));
    }
  }
  return c;
}

}  // namespace moelab
