#pragma once
// TOML files as the configuration readers see them: parsed with a one-line error
// (FILE:LINE:COLUMN: what), and turned into JSON for ConfigSection (train/toml_section.hpp).
#include <string>

#include <toml++/toml.h>
#include <nlohmann/json.hpp>

namespace moelab {

// Integers stay integers, floats floats; dates and times become null (no key takes one, so they
// fail as the wrong type).
nlohmann::json toml_to_json(const toml::node& n);
toml::table toml_file_parse(const std::string& path);
// One --set override ("key=value": a dotted key, arrays of tables by index, a TOML value or a
// bare word as a string) applied to a parsed file; one-line errors name the key.
void experiment_override_apply(toml::table& root, const std::string& kv);

}  // namespace moelab
