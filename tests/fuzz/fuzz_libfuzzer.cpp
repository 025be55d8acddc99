// libFuzzer entry for one reader: built once per target with MOELAB_FUZZ_TARGET=fuzz_<reader>
// (cmake -DMOELAB_FUZZ=ON with clang; `make fuzz` runs them).
#include <cstddef>
#include <cstdint>

#include "fuzz_targets.hpp"

#ifndef MOELAB_FUZZ_TARGET
#error "define MOELAB_FUZZ_TARGET as one of the fuzz_<reader> functions"
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  moelab::fuzz::MOELAB_FUZZ_TARGET({data, size});
  return 0;
}
