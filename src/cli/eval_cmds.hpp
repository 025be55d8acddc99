#pragma once
#include <cstdint>
#include <string>

namespace moelab {

struct EvalOptions {
  std::string checkpoint, evalset, data, out;
  int64_t batch = 64;
  int threads = 0;
};
// moelab eval: M_in, M_ex, M(f), PPL_ent (and per entity type) of a checkpoint on an evaluation
// set; prints a table and writes JSON.
void eval_cmd(const EvalOptions& o);

}  // namespace moelab
