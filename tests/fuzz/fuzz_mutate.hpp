#pragma once
// Deterministic mutations for the bounded fuzz run: the same seeds and the same PRNG seed give
// the same inputs, in the same order, on every machine.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_targets.hpp"

namespace moelab::fuzz {

struct Mutation {
  std::string name;  // what was done, e.g. "seed 1: truncate at 17" (printed on failure)
  Bytes bytes;
};

uint64_t fnv1a(std::string_view s);

// The seeds themselves, then systematic mutations (truncation at the interesting offsets;
// text: every line deleted and duplicated, every number and every string replaced once), then
// n_random random ones (bit flips, byte edits, splices, header fields set to extreme values;
// text: numbers, strings and values replaced, keys deleted and duplicated, lines shuffled).
// Binary inputs with a JSON header (safetensors) get the text edits inside the header, with
// its length field kept consistent.
std::vector<Mutation> mutations(const std::vector<Bytes>& seeds, bool text, int64_t n_random,
                                uint64_t seed);

}  // namespace moelab::fuzz
