#pragma once
// Fuzz targets: one per reader of user-supplied files. Each takes raw bytes, writes them where
// the reader wants a path, and runs the reader. A moelab::Error is an accepted outcome (the
// reader refused the input) as long as its message is one non-empty line; any other exception,
// a crash or a hang is a bug. Shared by the libFuzzer entries (fuzz_libfuzzer.cpp) and the
// bounded mutation run inside `make test` (fuzz_run.cpp).
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moelab::fuzz {

using Bytes = std::vector<uint8_t>;

// The libFuzzer-style entries: return on accepted or refused input, abort with one line on
// stderr naming the reader and the problem otherwise.
void fuzz_shard(std::span<const uint8_t> data);
void fuzz_safetensors(std::span<const uint8_t> data);
void fuzz_model_config(std::span<const uint8_t> data);
void fuzz_experiment(std::span<const uint8_t> data);
void fuzz_evalset(std::span<const uint8_t> data);
void fuzz_entities(std::span<const uint8_t> data);
void fuzz_data_spec(std::span<const uint8_t> data);

// ----------------------------------------------------------------------------
// what a run of a target gave

enum class Outcome {
  Accepted,   // the reader returned a result
  Refused,    // one-line moelab::Error
  MultiLine,  // moelab::Error whose message has a line break
  Empty,      // moelab::Error with an empty message
  Foreign,    // another exception type escaped the reader
  Invalid,    // accepted, but the result breaks the reader's documented promise
};

struct Verdict {
  Outcome outcome = Outcome::Accepted;
  std::string message;     // the error's text (or the broken promise)
  bool names_file = true;  // Refused: whether the message names the input file
  bool ok() const { return outcome == Outcome::Accepted || outcome == Outcome::Refused; }
};

const char* outcome_name(Outcome o);

struct Target {
  std::string_view name;  // e.g. "shard"; the libFuzzer binary is fuzz_<name>
  bool text;              // a text format (line- and token-aware mutations apply)
  Verdict (*run)(std::span<const uint8_t> data);
  void (*entry)(std::span<const uint8_t> data);  // fuzz_<name>
};

std::span<const Target> targets();
// Targets that crash, hang, throw a multi-line or a foreign error, or accept an invalid input
// on every input: fuzz_run --self-test checks that each is caught and named.
std::span<const Target> self_test_targets();
const Target* find_target(std::string_view name);

// Valid inputs for a target, made with the project's own writers and configs/.
std::vector<Bytes> seeds(std::string_view target);

// The folder where targets write their inputs: created on first use, one per process (call it
// before fork() so that children share it), removed by scratch_remove().
const std::string& scratch_dir();
void scratch_remove();

}  // namespace moelab::fuzz
