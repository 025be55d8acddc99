#include "model/delta.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string_view>
#include <unordered_set>

#include "backend/device.hpp"
#include "core/error.hpp"
#include "core/linalg.hpp"
#include "core/rng.hpp"

namespace moelab {

namespace {

// A NaN or infinity in a delta would break the ordering of top-k and poison a scale or an SVD:
// it is refused where it enters.
void check_finite(std::span<const float> delta, std::string_view who) {
  for (size_t i = 0; i < delta.size(); i++)
    if (!std::isfinite(delta[i]))
      fail(fmt::format("{}: delta holds a non-finite value at element {}", who, i));
}

// ----------------------------------------------------------------------------
// sampling

// Uniform in [0, bound) from draw i by the multiply-shift map (Lemire) without rejection: the
// bias is below bound / 2^64 < 2^-33 for bound < 2^31, far under any sampling noise.
int64_t draw_below(uint64_t seed, uint64_t stream, uint64_t i, int64_t bound) {
  const unsigned __int128 wide = (unsigned __int128)rng_u64(seed, stream, i) * uint64_t(bound);
  return int64_t(wide >> 64);
}

// m distinct positions of [0, n) by Floyd's algorithm: O(m) time and memory, for m << n.
std::vector<int32_t> sample_floyd(uint64_t seed, uint64_t stream, int64_t n, int64_t m) {
  std::unordered_set<int32_t> chosen;
  chosen.reserve(size_t(2 * m));
  for (int64_t j = n - m; j < n; j++) {
    const auto t = int32_t(draw_below(seed, stream, uint64_t(j - (n - m)), j + 1));
    if (!chosen.insert(t).second) chosen.insert(int32_t(j));
  }
  std::vector<int32_t> pos(chosen.begin(), chosen.end());
  std::sort(pos.begin(), pos.end());
  return pos;
}

// m distinct positions of [0, n) by the first m steps of a Fisher-Yates shuffle, returned as a
// mask [n] (1 = chosen): the caller reads them out in order, with no sort.
std::vector<uint8_t> sample_shuffle(uint64_t seed, uint64_t stream, int64_t n, int64_t m) {
  std::vector<int32_t> perm(static_cast<size_t>(n));  // [n]
  std::iota(perm.begin(), perm.end(), 0);
  for (int64_t j = 0; j < m; j++)
    std::swap(perm[size_t(j)], perm[size_t(j + draw_below(seed, stream, uint64_t(j), n - j))]);
  std::vector<uint8_t> mask(static_cast<size_t>(n), 0);  // [n]
  for (int64_t j = 0; j < m; j++) mask[size_t(perm[size_t(j)])] = 1;
  return mask;
}

// ----------------------------------------------------------------------------
// quantization

int64_t code_bound(int64_t bits) {  // largest |code| that quantize writes
  return bits == 1 ? 1 : (int64_t(1) << (bits - 1)) - 1;
}

void check_bits(int64_t bits, std::string_view who) {
  if (bits < 1 || bits > 8) fail(fmt::format("{}: bits must be in 1..8, got {}", who, bits));
}

// scale[o] over the column: max |delta| / code bound (bits >= 2) or mean |delta| (1 bit). One
// pass in row order, so that the strided column is never walked.
std::vector<float> channel_scales(std::span<const float> delta, int64_t in, int64_t out,
                                  int64_t bits) {
  std::vector<double> acc(static_cast<size_t>(out), 0.0);  // [out]
  for (int64_t i = 0; i < in; i++) {
    const float* row = delta.data() + i * out;
    for (int64_t o = 0; o < out; o++) {
      const double a = std::abs(double(row[o]));
      acc[size_t(o)] = bits == 1 ? acc[size_t(o)] + a : std::max(acc[size_t(o)], a);
    }
  }
  const double div = bits == 1 ? double(in) : double(code_bound(bits));
  std::vector<float> scales(static_cast<size_t>(out));  // [out]
  for (int64_t o = 0; o < out; o++) scales[size_t(o)] = float(acc[size_t(o)] / div);
  return scales;
}

}  // namespace

// ----------------------------------------------------------------------------
// sparse

std::vector<int32_t> delta_random_positions(uint64_t seed, uint64_t stream, int64_t n,
                                            int64_t nnz) {
  check(n > 0 && n < (int64_t(1) << 31), "delta_random_positions: n must be in [1, 2^31)");
  check(nnz >= 1 && nnz <= n, "delta_random_positions: nnz must be in [1, n]");
  // Draw the smaller of the kept set and the dropped set; the other is its complement, which
  // is uniform too. Floyd where that set is a small part of n, a partial shuffle otherwise.
  const bool complement = nnz > n - nnz;
  const int64_t m = complement ? n - nnz : nnz;
  std::vector<int32_t> pos;
  pos.reserve(size_t(nnz));
  if (m * 32 <= n) {
    const std::vector<int32_t> drawn = sample_floyd(seed, stream, n, m);
    if (!complement) return drawn;
    auto next = drawn.begin();
    for (int32_t p = 0; p < int32_t(n); p++) {
      if (next != drawn.end() && *next == p)
        ++next;
      else
        pos.push_back(p);
    }
    return pos;
  }
  const std::vector<uint8_t> mask = sample_shuffle(seed, stream, n, m);
  const uint8_t keep = complement ? 0 : 1;
  for (int32_t p = 0; p < int32_t(n); p++)
    if (mask[size_t(p)] == keep) pos.push_back(p);
  return pos;
}

std::vector<int32_t> delta_topk_positions(std::span<const float> delta, int64_t nnz) {
  const auto n = int64_t(delta.size());
  check(n < (int64_t(1) << 31), "delta_topk_positions: delta must have fewer than 2^31 elements");
  check(nnz >= 1 && nnz <= n, "delta_topk_positions: nnz must be in [1, n]");
  check_finite(delta, "delta_topk_positions");
  std::vector<int32_t> idx(static_cast<size_t>(n));  // [n]
  std::iota(idx.begin(), idx.end(), 0);
  // A strict total order: larger |delta| first, then the lower position.
  const auto ahead = [&](int32_t a, int32_t b) {
    const float x = std::abs(delta[size_t(a)]), y = std::abs(delta[size_t(b)]);
    return x > y || (x == y && a < b);
  };
  if (nnz < n) std::nth_element(idx.begin(), idx.begin() + (nnz - 1), idx.end(), ahead);
  idx.resize(size_t(nnz));
  std::sort(idx.begin(), idx.end());
  return idx;
}

std::vector<float> delta_gather(std::span<const float> delta, std::span<const int32_t> pos,
                                double scale) {
  std::vector<float> values(pos.size());  // [nnz]
  for (size_t j = 0; j < pos.size(); j++) {
    check(pos[j] >= 0 && size_t(pos[j]) < delta.size(), "delta_gather: position out of range");
    values[j] = float(double(delta[size_t(pos[j])]) * scale);
  }
  return values;
}

// ----------------------------------------------------------------------------
// quantized

QuantDelta delta_quantize(std::span<const float> delta, int64_t in, int64_t out, int64_t bits) {
  check_bits(bits, "delta_quantize");
  check(in >= 1 && out >= 1 && int64_t(delta.size()) == in * out,
        "delta_quantize: delta must be [in, out]");
  check_finite(delta, "delta_quantize");
  QuantDelta q;
  q.scales = channel_scales(delta, in, out, bits);
  q.codes.resize(size_t(in * out));
  // The codes are rounded against the stored float scale, so that |delta - scale * code| <=
  // scale / 2 holds for the scale a reader gets back (up to the clamp at the column's maximum).
  device_default().ops<float>().delta_quant_encode(q.codes.data(), delta.data(), q.scales.data(),
                                                   in, out, bits);
  return q;
}

// Code j takes bits [j * bits, (j + 1) * bits) of the little-endian bit stream. bits >= 2: the
// low `bits` bits of its two's complement, so that every code in [-2^(bits-1), 2^(bits-1) - 1]
// packs; 1 bit: -1 is bit 0 and +1 is bit 1 (0 is not a 1-bit code). The pad bits of the last
// byte are 0.
std::vector<uint8_t> delta_pack(std::span<const int8_t> codes, int64_t bits) {
  check_bits(bits, "delta_pack");
  const auto n = int64_t(codes.size());
  const int lo = bits == 1 ? -1 : -(1 << (bits - 1)), hi = bits == 1 ? 1 : (1 << (bits - 1)) - 1;
  const uint64_t mask = (uint64_t(1) << bits) - 1;
  std::vector<uint8_t> packed(size_t((n * bits + 7) / 8));  // [ceil(n * bits / 8)]
  uint64_t acc = 0;
  int64_t held = 0, w = 0;
  for (int64_t j = 0; j < n; j++) {
    const int c = codes[size_t(j)];
    if (c < lo || c > hi || (bits == 1 && c == 0))
      fail(fmt::format("delta_pack: code {} at {} does not fit in {} bits", c, j, bits));
    const uint64_t u = bits == 1 ? uint64_t(c > 0) : uint64_t(uint8_t(c)) & mask;
    acc |= u << held;
    held += bits;
    for (; held >= 8; held -= 8, acc >>= 8) packed[size_t(w++)] = uint8_t(acc);
  }
  if (held > 0) packed[size_t(w)] = uint8_t(acc);
  return packed;
}

std::vector<int8_t> delta_unpack(std::span<const uint8_t> packed, int64_t n, int64_t bits) {
  check_bits(bits, "delta_unpack");
  check(n >= 0, "delta_unpack: n must be >= 0");
  if (int64_t(packed.size()) != (n * bits + 7) / 8)
    fail(fmt::format("delta_unpack: {} bytes for {} codes of {} bits, expected {}", packed.size(),
                     n, bits, (n * bits + 7) / 8));
  const uint64_t mask = (uint64_t(1) << bits) - 1, sign = uint64_t(1) << (bits - 1);
  std::vector<int8_t> codes(static_cast<size_t>(n));  // [n]
  uint64_t acc = 0;
  int64_t held = 0, r = 0;
  for (int64_t j = 0; j < n; j++) {
    for (; held < bits; held += 8) acc |= uint64_t(packed[size_t(r++)]) << held;
    const uint64_t u = acc & mask;
    acc >>= bits;
    held -= bits;
    if (bits == 1)
      codes[size_t(j)] = u ? 1 : -1;
    else
      codes[size_t(j)] = int8_t(u & sign ? int64_t(u) - (int64_t(1) << bits) : int64_t(u));
  }
  return codes;
}

// ----------------------------------------------------------------------------
// low-rank

// delta = M [in, out] = P S Q^T (thin SVD, P [in, k], Q [out, k]), so delta^T = Q S P^T: the
// header's U is Q and its V is P. A[r, i] = sqrt(s_r) P[i, r], B[o, r] = Q[o, r] sqrt(s_r).
LowRankDelta delta_lowrank(std::span<const float> delta, int64_t in, int64_t out, int64_t rank) {
  check(in >= 1 && out >= 1 && int64_t(delta.size()) == in * out,
        "delta_lowrank: delta must be [in, out]");
  const int64_t k = std::min(in, out);
  if (rank < 1) fail(fmt::format("delta_lowrank: rank must be at least 1, got {}", rank));
  if (rank > k)
    fail(fmt::format("delta_lowrank: rank {} exceeds the matrix rank bound min(in, out) = {}", rank,
                     k));
  check_finite(delta, "delta_lowrank");
  const std::vector<double> M(delta.begin(), delta.end());  // [in, out]
  const Svd svd = linalg_svd(M, in, out);  // P = u [in, k], Q^T = vt [k, out], s [k] descending
  LowRankDelta lr;
  lr.A.resize(size_t(rank * in));
  lr.B.resize(size_t(out * rank));
  for (int64_t r = 0; r < rank; r++) {
    const double root = std::sqrt(svd.singular[size_t(r)]);
    for (int64_t i = 0; i < in; i++)
      lr.A[size_t(r * in + i)] = float(root * svd.u[size_t(i * k + r)]);
    for (int64_t o = 0; o < out; o++)
      lr.B[size_t(o * rank + r)] = float(svd.vt[size_t(r * out + o)] * root);
  }
  lr.singular = svd.singular;
  return lr;
}

}  // namespace moelab
