#pragma once
// One table of a TOML configuration file, read key by key as JSON (TOML integers stay integers):
// required and optional keys, type checks, and a one-line error naming the file and
// 'section.key'. Experiment files (train/experiment.hpp) and the study files (study/) read their
// sections through it; train/toml_file.hpp turns a TOML file into the JSON it reads.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moelab {

// A value of the wrong type, and at finish() a key that nobody read, fail with one line naming
// the file and 'section.key'.
class ConfigSection {
 public:
  // table: null or not an object reads as an empty section.
  ConfigSection(const nlohmann::json* table, std::string name, std::string source);

  // Leaves `out` as it is when the key is absent.
  void get(const std::string& key, bool& out);
  void get(const std::string& key, int& out);
  void get(const std::string& key, int64_t& out);
  void get(const std::string& key, uint64_t& out);
  void get(const std::string& key, double& out);
  void get(const std::string& key, std::string& out);
  void get(const std::string& key, std::vector<int64_t>& out);
  void get(const std::string& key, std::vector<double>& out);  // integers or floats
  void get(const std::string& key, std::vector<std::string>& out);
  bool has(const std::string& key) const;  // whether the table gives the key (read or not)
  void finish() const;
  [[noreturn]] void bad(const std::string& key, const std::string& why) const;
  // bad(key, why) unless `ok`: a value's range or a required key, after finish().
  void check(bool ok, const std::string& key, const std::string& why) const;

 private:
  const nlohmann::json* find(const std::string& key);
  template <typename T>
  void get_integer(const std::string& key, T& out);
  template <typename T, typename Is>
  void get_array(const std::string& key, std::vector<T>& out, Is is, const char* what);

  const nlohmann::json* t_;
  std::string name_;  // e.g. "train" or "phases[1]"
  std::string src_;
  std::vector<std::string> known_;
};

}  // namespace moelab
