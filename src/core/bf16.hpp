#pragma once
// float -> bf16, the one rounding of the project: the bf16 GEMM converts its operands with it and
// the safetensors writer its tensors.
#include <bit>
#include <cstdint>

namespace moelab {

// Round to nearest even; a NaN stays a (quiet) NaN instead of rounding into the exponent. Inline:
// the bf16 GEMM converts every operand element with it.
inline uint16_t bf16_from_float(float x) {
  const uint32_t u = std::bit_cast<uint32_t>(x);
  if (x != x) return uint16_t((u >> 16) | 0x40u);
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

}  // namespace moelab
