#pragma once
#include <string>

namespace moelab {

struct DataPrepareOptions {
  std::string spec, out, preset;
  int threads = 0;
};
void data_prepare_cmd(const DataPrepareOptions& o);

// Prints the manifest summary, token counts, the most frequent tokens and a decoded sample of
// each subset.
void data_inspect(const std::string& dir);

}  // namespace moelab
