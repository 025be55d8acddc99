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

// Checks every token shard of a data directory (header, size, checksum, every token id below the
// vocabulary size) and the manifest's shards and ranges against the files. One line on stderr
// per problem, naming the file; returns 1 if there was any, else prints a summary and returns 0.
int data_verify(const std::string& dir);

}  // namespace moelab
