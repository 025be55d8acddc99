#pragma once
// DeRS deltas (docs/methods.md §3.13) as plain arithmetic on one matrix: an expert's difference
// from the shared base, delta [in, out] (the InOut layout of the expert tensors, row-major), made
// sparse, k-bit or low-rank, and rebuilt. No model types here: `moelab compress`, the model's
// initialisation and the tests all call these.
#include <cstdint>
#include <span>
#include <vector>

namespace moelab {

// ----------------------------------------------------------------------------
// sparse

// nnz distinct positions of [0, n), drawn uniformly without replacement from (seed, stream),
// sorted ascending. The same arguments give the same positions on any machine.
std::vector<int32_t> delta_random_positions(uint64_t seed, uint64_t stream, int64_t n, int64_t nnz);

// The nnz positions of the largest |delta| (ties: lower position first), sorted ascending.
std::vector<int32_t> delta_topk_positions(std::span<const float> delta, int64_t nnz);

// values[j] = delta[pos[j]] * scale (DARE rescales random drops by 1 / (1 - p); top-k by 1).
std::vector<float> delta_gather(std::span<const float> delta, std::span<const int32_t> pos,
                                double scale);

// ----------------------------------------------------------------------------
// quantized: per output channel o, symmetric: delta[i, o] ~ scale[o] * code[i, o] with codes in
// [-(2^(bits-1) - 1), 2^(bits-1) - 1] and scale[o] = max_i |delta[i, o]| / that bound; 1 bit:
// codes in {-1, +1} (sign, 0 maps to +1) and scale[o] = mean_i |delta[i, o]|.

struct QuantDelta {
  std::vector<int8_t> codes;  // [in, out]
  std::vector<float> scales;  // [out]
};
QuantDelta delta_quantize(std::span<const float> delta, int64_t in, int64_t out, int64_t bits);

// Codes of `bits` bits each, packed little-endian into bytes (two's complement in the low bits),
// and back. packed size: ceil(n * bits / 8).
std::vector<uint8_t> delta_pack(std::span<const int8_t> codes, int64_t bits);
std::vector<int8_t> delta_unpack(std::span<const uint8_t> packed, int64_t n, int64_t bits);

// ----------------------------------------------------------------------------
// low-rank: delta^T [out, in] ~ B A with A [rank, in], B [out, rank] from the truncated SVD
// (computed in double) of delta^T = U S V^T (U [out, k], V [in, k], k = min(in, out), S
// descending): A = sqrt(S_r) V_r^T, B = U_r sqrt(S_r) with the first r = rank columns, so that
// x delta ~ (x A^T) B^T, the adapter form of the model's low-rank slots.

struct LowRankDelta {
  std::vector<float> A;          // [rank, in]
  std::vector<float> B;          // [out, rank]
  std::vector<double> singular;  // every singular value of delta, descending
};
LowRankDelta delta_lowrank(std::span<const float> delta, int64_t in, int64_t out, int64_t rank);

}  // namespace moelab
