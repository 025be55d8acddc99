#include "train/toml_section.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.hpp"
#include "train/toml_file.hpp"

namespace moelab {

using json = nlohmann::json;

json toml_to_json(const toml::node& n) {
  if (n.is_integer()) {
    return *n.value<int64_t>();
  }
  if (n.is_floating_point()) {
    return *n.value<double>();
  }
  if (n.is_boolean()) {
    return *n.value<bool>();
  }
  if (n.is_string()) {
    return *n.value<std::string>();
  }
  if (const auto* a = n.as_array()) {
    json out = json::array();
    for (const auto& e : *a) {
      out.push_back(toml_to_json(e));
    }
    return out;
  }
  if (const auto* t = n.as_table()) {
    json out = json::object();
    for (const auto& [k, v] : *t) {
      out[std::string(k.str())] = toml_to_json(v);
    }
    return out;
  }
  return nullptr;
}

toml::table toml_file_parse(const std::string& path) {
  try {
    return toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    fail(fmt::format("{}:{}:{}: {}", path, where.line, where.column, e.description()));
  }
}

ConfigSection::ConfigSection(const json* table, std::string name, std::string source)
    : t_(table && table->is_object() ? table : nullptr),
      name_(std::move(name)),
      src_(std::move(source)) {}

void ConfigSection::bad(const std::string& key, const std::string& why) const {
  fail(fmt::format("{}: '{}.{}' {}", src_, name_, key, why));
}

void ConfigSection::check(bool ok, const std::string& key, const std::string& why) const {
  if (!ok) {
    bad(key, why);
  }
}

const json* ConfigSection::find(const std::string& key) {
  known_.push_back(key);
  if (!t_) {
    return nullptr;
  }
  const auto it = t_->find(key);
  return it == t_->end() ? nullptr : &*it;
}

void ConfigSection::get(const std::string& key, bool& out) {
  const json* n = find(key);
  if (!n) {
    return;
  }
  check(n->is_boolean(), key, "must be true or false");
  out = n->get<bool>();
}

template <typename T>
void ConfigSection::get_integer(const std::string& key, T& out) {
  const json* n = find(key);
  if (!n) {
    return;
  }
  check(n->is_number_integer(), key, "must be an integer");
  out = T(n->get<int64_t>());
}
void ConfigSection::get(const std::string& key, int& out) {
  get_integer(key, out);
}
void ConfigSection::get(const std::string& key, int64_t& out) {
  get_integer(key, out);
}
void ConfigSection::get(const std::string& key, uint64_t& out) {
  get_integer(key, out);
}

void ConfigSection::get(const std::string& key, double& out) {
  const json* n = find(key);
  if (!n) {
    return;
  }
  check(n->is_number(), key, "must be a number");
  out = n->get<double>();
}

void ConfigSection::get(const std::string& key, std::string& out) {
  const json* n = find(key);
  if (!n) {
    return;
  }
  check(n->is_string(), key, "must be a string");
  out = n->get<std::string>();
}

template <typename T, typename Is>
void ConfigSection::get_array(const std::string& key, std::vector<T>& out, Is is,
                              const char* what) {
  const json* n = find(key);
  if (!n) {
    return;
  }
  const std::string why = fmt::format("must be an array of {}", what);
  check(n->is_array(), key, why);
  out.clear();
  for (const json& e : *n) {
    check(is(e), key, why);
    out.push_back(e.get<T>());
  }
}

void ConfigSection::get(const std::string& key, std::vector<int64_t>& out) {
  get_array(
      key, out, [](const json& e) { return e.is_number_integer(); }, "integers");
}

void ConfigSection::get(const std::string& key, std::vector<double>& out) {
  get_array(
      key, out, [](const json& e) { return e.is_number(); }, "numbers");
}

void ConfigSection::get(const std::string& key, std::vector<std::string>& out) {
  get_array(
      key, out, [](const json& e) { return e.is_string(); }, "strings");
}

bool ConfigSection::has(const std::string& key) const {
  return t_ && t_->contains(key);
}

void ConfigSection::finish() const {
  if (!t_) {
    return;
  }
  for (const auto& [k, _] : t_->items()) {
    if (std::find(known_.begin(), known_.end(), k) == known_.end()) {
      fail(fmt::format("{}: unknown key '{}.{}'", src_, name_, k));
    }
  }
}

}  // namespace moelab
