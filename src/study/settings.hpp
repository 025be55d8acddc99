#pragma once
// The settings a study's runs were started with, kept in its folder (RUN/settings.json) and
// compared on every later start of `moelab study forgetting`, `moelab study ct` and `moelab study
// sweep`: a study resumed after its file (or a --set) changed would mix runs made under different
// settings, so such a start is refused in one line naming the first key that differs, before
// anything is trained or written. --restart discards the study's runs instead.
//
// Settings are flat: every TOML value under its dotted key ("schedule.max_lr"), the tables of an
// array under "phases[0].steps", or under their name where the entries are named
// ("ct.methods[lora].kind"). A named entry present on one side only is a method added to (or
// left out of) the study, not a change: its runs are new (or stay as they were).
#include <initializer_list>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moelab {

using Settings = std::map<std::string, nlohmann::json>;

// Flattens a config as JSON. named: the arrays of tables keyed by their "name" (by dotted key,
// e.g. "ct.methods"); skip: keys left out (exact, or a table's whole prefix), such as the lists
// of variants and seeds (a study may grow) and what does not change what a run computes.
Settings settings_flatten(const nlohmann::json& config, const std::set<std::string>& named,
                          const std::set<std::string>& skip);

// The keys every study leaves out of its settings, with `more` (its own lists of variants and
// seeds): run.dir and run.seed (each run has its own), and what changes no result (threads,
// peak_gflops, log_every, the checkpoints kept).
std::set<std::string> settings_skip(std::initializer_list<std::string> more);

// The first difference between the settings recorded and those of this start, as
// "KEY = OLD, this start has KEY = NEW"; "" when they agree (named entries on one side only
// do not count).
std::string settings_difference(const Settings& recorded, const Settings& now);

// Compares `now` with DIR/settings.json when it exists and refuses a difference in one line
// (naming the file, the key and what to do: `how` names the ways on, e.g. "a new run.dir, or
// --restart"). Returns whether the file existed.
bool settings_check(const std::string& dir, const Settings& now, const std::string& how);

// DIR/settings.json: what was recorded there merged with `now` (named entries added since),
// written atomically; `command` names the study ("moelab study ct").
void settings_record(const std::string& dir, const Settings& now, const std::string& command);

// The strings under FIELD of the objects of the array KEY in the JSON file PATH (the runs that
// study.json lists under "variants"/"dir"); none when the file is absent or not such a record.
std::set<std::string> study_listed(const std::string& path, const std::string& key,
                                   const std::string& field);

// --restart (moelab study forgetting, moelab study ct): what an earlier study wrote in DIR goes,
// nothing else there: the folders `names` (its runs, or methods, as its record lists them and as
// this start names them), the entries `files` (its record, report, settings.json) and, when the
// study built it (`built_evalset`), its evaluation set. A name that is not the name of an entry of
// DIR itself ("", ".", "..", "a/b": a record edited by hand) is left alone with a note: it could
// name DIR or what lies outside it. Prints "--restart: N WHAT of the earlier study in DIR
// discarded" and returns N, the folders removed.
int64_t study_discard(const std::string& dir, const std::set<std::string>& names,
                      const std::vector<std::string>& files, bool built_evalset,
                      const std::string& what);

}  // namespace moelab
