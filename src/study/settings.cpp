#include "study/settings.hpp"

#include <fmt/format.h>

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>

#include "core/error.hpp"
#include "core/fileio.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

bool skipped(const std::string& key, const std::set<std::string>& skip) {
  for (const std::string& s : skip)
    if (key == s || (key.size() > s.size() && key.compare(0, s.size(), s) == 0 &&
                     (key[s.size()] == '.' || key[s.size()] == '[')))
      return true;
  return false;
}

void flatten(const json& v, const std::string& key, const std::set<std::string>& named,
             const std::set<std::string>& skip, Settings& out) {
  if (!key.empty() && skipped(key, skip)) return;
  if (v.is_object()) {
    for (const auto& [k, sub] : v.items())
      flatten(sub, key.empty() ? k : key + "." + k, named, skip, out);
    return;
  }
  const bool tables = v.is_array() && !v.empty() &&
                      std::all_of(v.begin(), v.end(), [](const json& e) { return e.is_object(); });
  if (tables) {
    const bool by_name = named.contains(key);
    for (size_t i = 0; i < v.size(); i++) {
      const json& e = v[i];
      const std::string at = by_name && e.contains("name") && e["name"].is_string()
                                 ? e["name"].get<std::string>()
                                 : std::to_string(i);
      flatten(e, fmt::format("{}[{}]", key, at), named, skip, out);
    }
    return;
  }
  out[key] = v;
}

// The named entry a key belongs to ("ct.methods[lora]"), or "".
std::string entry_of(const std::string& key) {
  const size_t open = key.find('['), close = key.find(']');
  if (open == std::string::npos || close == std::string::npos) return "";
  const std::string at = key.substr(open + 1, close - open - 1);
  const bool index = !at.empty() && std::all_of(at.begin(), at.end(), [](unsigned char c) {
    return std::isdigit(c) != 0;
  });
  return index ? "" : key.substr(0, close + 1);
}

std::set<std::string> entries(const Settings& s) {
  std::set<std::string> out;
  for (const auto& [k, v] : s)
    if (const std::string e = entry_of(k); !e.empty()) out.insert(e);
  return out;
}

std::string shown(const json& v) {
  return one_line(v.dump(), 120);
}

std::string path_of(const std::string& dir) {
  return (fs::path(dir) / "settings.json").string();
}

Settings settings_read(const std::string& path) {
  const json j = json::parse(file_read(path), nullptr, false);
  if (!j.is_object() || !j.contains("settings") || !j["settings"].is_object())
    fail(fmt::format("{}: invalid (no 'settings' object); remove it, or use --restart", path));
  Settings s;
  for (const auto& [k, v] : j["settings"].items()) s[k] = v;
  return s;
}

}  // namespace

Settings settings_flatten(const json& config, const std::set<std::string>& named,
                          const std::set<std::string>& skip) {
  Settings out;
  flatten(config, "", named, skip, out);
  return out;
}

std::set<std::string> settings_skip(std::initializer_list<std::string> more) {
  std::set<std::string> s = {
      "run.dir",       "run.seed",         "run.threads",         "run.peak_gflops",
      "run.log_every", "checkpoint.every", "checkpoint.keep_last"};
  s.insert(more.begin(), more.end());
  return s;
}

std::string settings_difference(const Settings& recorded, const Settings& now) {
  const std::set<std::string> old_entries = entries(recorded), new_entries = entries(now);
  auto one_sided = [&](const std::string& key) {
    const std::string e = entry_of(key);
    return !e.empty() && old_entries.contains(e) != new_entries.contains(e);
  };
  std::set<std::string> keys;
  for (const auto& [k, v] : recorded) keys.insert(k);
  for (const auto& [k, v] : now) keys.insert(k);
  for (const std::string& k : keys) {
    if (one_sided(k)) continue;
    const auto a = recorded.find(k), b = now.find(k);
    if (a != recorded.end() && b != now.end() && a->second == b->second) continue;
    if (a == recorded.end())
      return fmt::format("no {}, this start has {} = {}", k, k, shown(b->second));
    if (b == now.end()) return fmt::format("{} = {}, this start has none", k, shown(a->second));
    return fmt::format("{} = {}, this start has {}", k, shown(a->second), shown(b->second));
  }
  return "";
}

bool settings_check(const std::string& dir, const Settings& now, const std::string& how) {
  const std::string path = path_of(dir);
  std::error_code ec;
  if (!fs::exists(path, ec)) return false;
  const std::string diff = settings_difference(settings_read(path), now);
  if (!diff.empty())
    fail(fmt::format(
        "{}: the study in {} was started with {}; resuming would mix runs made under both "
        "settings. Use {}",
        path, dir, diff, how));
  return true;
}

void settings_record(const std::string& dir, const Settings& now, const std::string& command) {
  const std::string path = path_of(dir);
  std::error_code ec;
  const Settings recorded = fs::exists(path, ec) ? settings_read(path) : Settings{};
  Settings merged = recorded;
  for (const auto& [k, v] : now) merged[k] = v;
  if (fs::exists(path, ec) && merged == recorded) return;
  ojson s = ojson::object();
  for (const auto& [k, v] : merged) s[k] = v;
  const ojson j = {{"written_by", command},
                   {"about",
                    "the settings this study's runs were started with; every later start "
                    "compares its own with them and refuses a difference (--restart discards "
                    "the runs instead)"},
                   {"settings", s}};
  fs::create_directories(dir, ec);
  // under a temporary name of this process's own: the workers of a sweep may start together
  // and record the same settings at once
  file_write_atomic(path, j.dump(2) + "\n", fmt::format(".tmp.{}", long(::getpid())));
}

std::set<std::string> study_listed(const std::string& path, const std::string& key,
                                   const std::string& field) {
  std::set<std::string> out;
  std::error_code ec;
  if (!fs::exists(path, ec)) return out;
  const json j = json::parse(file_read(path), nullptr, false);
  if (!j.is_object() || !j.contains(key) || !j[key].is_array()) return out;
  for (const json& e : j[key])
    if (e.is_object() && e.contains(field) && e[field].is_string())
      out.insert(e[field].get<std::string>());
  return out;
}

int64_t study_discard(const std::string& dir, const std::set<std::string>& names,
                      const std::vector<std::string>& files, bool built_evalset,
                      const std::string& what) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return 0;
  int64_t removed = 0;
  for (const std::string& n : names) {
    if (n.empty() || n == "." || n == ".." || fs::path(n).filename() != fs::path(n)) {
      std::fprintf(stderr,
                   "--restart: '%s' (listed by the earlier study) is not a folder's name; "
                   "nothing removed for it\n",
                   one_line(n, 80).c_str());
      continue;
    }
    if (fs::exists(fs::path(dir) / n, ec)) removed += fs::remove_all(fs::path(dir) / n, ec) > 0;
  }
  for (const std::string& f : files) fs::remove_all(fs::path(dir) / f, ec);
  if (built_evalset)
    for (const char* f : {"evalset.jsonl", "evalset.jsonl.summary.json"})
      fs::remove(fs::path(dir) / f, ec);
  std::fprintf(stderr, "--restart: %ld %s of the earlier study in %s discarded\n", long(removed),
               what.c_str(), dir.c_str());
  return removed;
}

}  // namespace moelab
