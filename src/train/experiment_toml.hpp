#pragma once
// Experiment files as TOML, for the studies that read sections of their own from them.
#include <string>

#include <toml++/toml.h>

namespace moelab {

// One --set override ("key=value": a dotted key, arrays of tables by index, a TOML value or a
// bare word as a string) applied to a parsed file; one-line errors name the key.
void experiment_override_apply(toml::table& root, const std::string& kv);

}  // namespace moelab
