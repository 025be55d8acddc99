// DeRS delta arithmetic (model/delta.*): random and top-k positions against brute-force
// references and a chi-square check, DARE's rescaling unbiased over many draws, k-bit codes
// within half a step of the delta, bit packing exact, and the truncated SVD at the
// Eckart-Young error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "model/delta.hpp"
#include "test_util.hpp"

using namespace moelab;
using namespace moelab::test;

namespace {

void expect_valid_positions(const std::vector<int32_t>& pos, int64_t n, int64_t nnz,
                            const std::string& what) {
  ASSERT_EQ(int64_t(pos.size()), nnz) << what;
  for (size_t j = 0; j < pos.size(); j++) {
    ASSERT_GE(pos[j], 0) << what;
    ASSERT_LT(pos[j], n) << what;
    if (j > 0) {
      ASSERT_LT(pos[j - 1], pos[j]) << what << ": not strictly ascending at " << j;
    }
  }
}

// Pearson's statistic over positions for `trials` draws of nnz of n, each position's count
// compared with trials * nnz / n. Without replacement a count's variance is E (1 - nnz / n), so
// the statistic is divided by (1 - nnz / n) to have mean about n - 1.
double chi_square(int64_t n, int64_t nnz, int64_t trials) {
  std::vector<int64_t> count(static_cast<size_t>(n), 0);
  for (int64_t t = 0; t < trials; t++)
    for (int32_t p : delta_random_positions(11, uint64_t(t), n, nnz)) count[size_t(p)]++;
  const double E = double(trials) * double(nnz) / double(n), q = 1.0 - double(nnz) / double(n);
  double stat = 0;
  for (int64_t c : count) stat += (double(c) - E) * (double(c) - E) / (E * q);
  return stat;
}

std::vector<float> randn_f(int64_t n, uint64_t seed) {
  return randn<float>(n, seed);
}

// Small integers times 0.5 with both signs: many ties in |delta|.
std::vector<float> tied(int64_t n, uint64_t seed) {
  std::vector<float> d(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; i++)
    d[size_t(i)] = 0.5f * float(int64_t(rng_u64(seed, 3, uint64_t(i)) % 9) - 4);
  return d;
}

// (B A)^T [in, out] in double: delta ~ rebuilt.
std::vector<double> rebuild(const LowRankDelta& lr, int64_t in, int64_t out, int64_t rank) {
  std::vector<double> R(static_cast<size_t>(in * out), 0.0);
  for (int64_t i = 0; i < in; i++)
    for (int64_t o = 0; o < out; o++)
      for (int64_t r = 0; r < rank; r++)
        R[size_t(i * out + o)] +=
            double(lr.A[size_t(r * in + i)]) * double(lr.B[size_t(o * rank + r)]);
  return R;
}

double frobenius_diff(const std::vector<float>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); i++) s += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return std::sqrt(s);
}

}  // namespace

// ----------------------------------------------------------------------------
// sparse

// Both samplers (Floyd for a small set, the partial shuffle otherwise) and both sides of the
// complement, up to n = 2^22.
TEST(DeltaTest, RandomPositionsDistinctSortedInRange) {
  const std::vector<std::pair<int64_t, int64_t>> cases = {{1, 1},
                                                          {10, 3},
                                                          {1000, 10},
                                                          {1000, 500},
                                                          {1000, 990},
                                                          {1000, 31},
                                                          {1000, 1},
                                                          {100000, 50},
                                                          {100000, 99990},
                                                          {int64_t(1) << 22, 40000},
                                                          {int64_t(1) << 22, int64_t(1) << 21}};
  for (const auto& [n, nnz] : cases)
    expect_valid_positions(delta_random_positions(3, 1, n, nnz), n, nnz,
                           "n " + std::to_string(n) + " nnz " + std::to_string(nnz));
}

TEST(DeltaTest, RandomPositionsDeterministicPerStream) {
  for (const auto& [n, nnz] : std::vector<std::pair<int64_t, int64_t>>{
           {1000, 10}, {1000, 500}, {1000, 990}, {100000, 50}}) {
    const auto a = delta_random_positions(7, 1, n, nnz);
    EXPECT_EQ(a, delta_random_positions(7, 1, n, nnz)) << n << " " << nnz;
    EXPECT_NE(a, delta_random_positions(7, 2, n, nnz)) << n << " " << nnz;
    EXPECT_NE(a, delta_random_positions(8, 1, n, nnz)) << n << " " << nnz;
  }
}

// Every position equally likely: the chi-square statistic (df = n - 1) below df + 6 sqrt(2 df),
// for the Floyd path, the shuffle path and the complement of each.
TEST(DeltaTest, RandomPositionsUniform) {
  const std::vector<std::pair<int64_t, int64_t>> cases = {
      {640, 10}, {640, 630}, {64, 20}, {64, 50}, {64, 1}};
  for (const auto& [n, nnz] : cases) {
    const double df = double(n - 1);
    EXPECT_LE(chi_square(n, nnz, 4000), df + 6.0 * std::sqrt(2.0 * df)) << n << " " << nnz;
  }
}

TEST(DeltaTest, RandomPositionsAllWhenNnzIsN) {
  for (int64_t n : {1, 5, 64, 1000}) {
    std::vector<int32_t> all(static_cast<size_t>(n));
    std::iota(all.begin(), all.end(), 0);
    EXPECT_EQ(delta_random_positions(5, 9, n, n), all) << n;
  }
}

TEST(DeltaTest, RandomPositionsBadArguments) {
  EXPECT_THROW(delta_random_positions(1, 1, 0, 1), Error);
  EXPECT_THROW(delta_random_positions(1, 1, 10, 0), Error);
  EXPECT_THROW(delta_random_positions(1, 1, 10, 11), Error);
  EXPECT_THROW(delta_random_positions(1, 1, int64_t(1) << 31, 1), Error);
}

// Against the definition: p is kept iff fewer than nnz positions rank ahead of it (larger
// |delta|, or equal and lower), counted pairwise.
TEST(DeltaTest, TopkMatchesBruteForceWithTies) {
  const int64_t n = 300;
  const std::vector<float> d = tied(n, 4);
  for (int64_t nnz : {1, 2, 7, 100, 299, 300}) {
    std::vector<int32_t> ref;
    for (int64_t p = 0; p < n; p++) {
      int64_t ahead = 0;
      for (int64_t q = 0; q < n; q++) {
        const float x = std::abs(d[size_t(q)]), y = std::abs(d[size_t(p)]);
        ahead += x > y || (x == y && q < p);
      }
      if (ahead < nnz) ref.push_back(int32_t(p));
    }
    EXPECT_EQ(delta_topk_positions(d, nnz), ref) << "nnz " << nnz;
  }
  EXPECT_THROW(delta_topk_positions(d, 0), Error);
  EXPECT_THROW(delta_topk_positions(d, n + 1), Error);
}

// p = 0: every position, scale 1, rebuilt bit for bit.
TEST(DeltaTest, SparseRoundTripExact) {
  const int64_t n = 5000;
  const std::vector<float> d = randn_f(n, 12);
  for (const auto& pos : {delta_random_positions(2, 3, n, n), delta_topk_positions(d, n)}) {
    const std::vector<float> v = delta_gather(d, pos, 1.0);
    std::vector<float> back(static_cast<size_t>(n), 0.0f);
    for (size_t j = 0; j < pos.size(); j++) back[size_t(pos[j])] = v[j];
    EXPECT_EQ(std::memcmp(back.data(), d.data(), d.size() * sizeof(float)), 0);
  }
  const std::vector<int32_t> pos = {0, 3, 4};
  EXPECT_EQ(delta_gather(d, pos, 2.0), (std::vector<float>{2 * d[0], 2 * d[3], 2 * d[4]}));
}

// DARE: keep nnz = (1 - p) n at random and scale by n / nnz = 1 / (1 - p). The mean of T
// rebuilt deltas is delta_i times a binomial fraction, so its standard deviation is
// |delta_i| sqrt((1/q - 1) / T) with q = nnz / n: every element within 5 of those.
TEST(DeltaTest, DareUnbiased) {
  const int64_t n = 200, nnz = 60, T = 4000;
  const double q = double(nnz) / double(n), scale = double(n) / double(nnz);
  const std::vector<float> d = randn_f(n, 13);
  std::vector<double> mean(static_cast<size_t>(n), 0.0);
  for (int64_t t = 0; t < T; t++) {
    const auto pos = delta_random_positions(21, uint64_t(t), n, nnz);
    const auto v = delta_gather(d, pos, scale);
    for (size_t j = 0; j < pos.size(); j++) mean[size_t(pos[j])] += double(v[j]) / double(T);
  }
  const double sd = std::sqrt((1.0 / q - 1.0) / double(T));
  for (int64_t i = 0; i < n; i++)
    EXPECT_LE(std::abs(mean[size_t(i)] - d[size_t(i)]), 5.0 * sd * std::abs(d[size_t(i)]) + 1e-7)
        << "element " << i;
}

// ----------------------------------------------------------------------------
// quantized

// bits 2..8: codes in [-qmax, qmax], scale[o] = max |delta| / qmax, every element within half
// a step, the column's maximum at +-qmax, and an all-zero column with scale 0 and codes 0.
TEST(DeltaTest, QuantizeWithinHalfStep) {
  const int64_t in = 37, out = 23;
  std::vector<float> d = randn_f(in * out, 14);
  for (int64_t i = 0; i < in; i++) d[size_t(i * out + 5)] = 0.0f;                    // zero column
  for (int64_t i = 0; i < in; i++) d[size_t(i * out + 9)] = i == 17 ? -3.0f : 0.0f;  // one entry
  for (int64_t bits = 2; bits <= 8; bits++) {
    const QuantDelta q = delta_quantize(d, in, out, bits);
    ASSERT_EQ(int64_t(q.codes.size()), in * out);
    ASSERT_EQ(int64_t(q.scales.size()), out);
    const int qmax = (1 << (bits - 1)) - 1;
    for (int64_t o = 0; o < out; o++) {
      double mx = 0;
      for (int64_t i = 0; i < in; i++) mx = std::max(mx, std::abs(double(d[size_t(i * out + o)])));
      const double s = q.scales[size_t(o)];
      EXPECT_NEAR(s, mx / qmax, 1e-7 * mx / qmax) << "bits " << bits << " column " << o;
      bool at_bound = false;
      for (int64_t i = 0; i < in; i++) {
        const int c = q.codes[size_t(i * out + o)];
        const double x = d[size_t(i * out + o)];
        ASSERT_LE(std::abs(c), qmax) << "bits " << bits;
        EXPECT_LE(std::abs(x - s * c), 0.5 * s * (1 + 1e-6)) << "bits " << bits << " " << i;
        if (o == 5) {
          EXPECT_EQ(c, 0);
        }
        at_bound |= std::abs(c) == qmax;
      }
      if (o != 5) {
        EXPECT_TRUE(at_bound) << "bits " << bits << " column " << o;
      }
    }
    EXPECT_EQ(q.scales[5], 0.0f);
    EXPECT_EQ(q.codes[size_t(17 * out + 9)], -qmax);
  }
}

// 8 bits on a Gaussian [256, 16]: the relative Frobenius error is about 0.7% (a step of
// max / 127 ~ 2.8 sigma / 127, error sd step / sqrt(12)); bound 1%.
TEST(DeltaTest, Quantize8BitsSmallError) {
  const int64_t in = 256, out = 16;
  const std::vector<float> d = randn_f(in * out, 15);
  const QuantDelta q = delta_quantize(d, in, out, 8);
  double err = 0, norm = 0;
  for (int64_t i = 0; i < in * out; i++) {
    const double x = d[size_t(i)], y = double(q.scales[size_t(i % out)]) * q.codes[size_t(i)];
    err += (x - y) * (x - y);
    norm += x * x;
  }
  EXPECT_LT(std::sqrt(err / norm), 0.01);
  EXPECT_GT(std::sqrt(err / norm), 0.001);  // it is quantized at all
}

// 1 bit: the sign (0 and -0 to +1) and the mean |delta| of the column.
TEST(DeltaTest, Quantize1BitSignAndMean) {
  const int64_t in = 29, out = 7;
  std::vector<float> d = randn_f(in * out, 16);
  d[3] = 0.0f;
  d[10] = -0.0f;
  const QuantDelta q = delta_quantize(d, in, out, 1);
  for (int64_t o = 0; o < out; o++) {
    double sum = 0;
    for (int64_t i = 0; i < in; i++) sum += std::abs(double(d[size_t(i * out + o)]));
    EXPECT_FLOAT_EQ(q.scales[size_t(o)], float(sum / double(in))) << o;
  }
  for (int64_t i = 0; i < in * out; i++)
    EXPECT_EQ(q.codes[size_t(i)], d[size_t(i)] >= 0.0f ? 1 : -1) << i;
  EXPECT_EQ(q.codes[3], 1);
  EXPECT_EQ(q.codes[10], 1);
}

TEST(DeltaTest, QuantizeBadBits) {
  const std::vector<float> d(6, 1.0f);
  for (int64_t bits : {-1, 0, 9, 16}) {
    try {
      delta_quantize(d, 2, 3, bits);
      ADD_FAILURE() << "bits " << bits << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("bits must be in 1..8"), std::string::npos) << e.what();
    }
  }
}

// Random codes over the full two's complement range (1 bit: -1 and +1), the extremes included,
// for lengths that end inside and on a byte: exact round trip, ceil(n bits / 8) bytes.
TEST(DeltaTest, PackUnpackRoundTrip) {
  for (int64_t bits = 1; bits <= 8; bits++) {
    const int lo = bits == 1 ? -1 : -(1 << (bits - 1)), hi = bits == 1 ? 1 : (1 << (bits - 1)) - 1;
    for (int64_t n : {0, 1, 2, 7, 8, 9, 13, 1001}) {
      std::vector<int8_t> codes(static_cast<size_t>(n));
      for (int64_t j = 0; j < n; j++) {
        const int c = lo + int(rng_u64(uint64_t(bits), 5, uint64_t(j)) % uint64_t(hi - lo + 1));
        codes[size_t(j)] = int8_t(bits == 1 && c == 0 ? 1 : c);
      }
      if (n >= 2) codes[0] = int8_t(lo), codes[size_t(n - 1)] = int8_t(hi);
      const std::vector<uint8_t> packed = delta_pack(codes, bits);
      EXPECT_EQ(int64_t(packed.size()), (n * bits + 7) / 8) << bits << " " << n;
      EXPECT_EQ(delta_unpack(packed, n, bits), codes) << "bits " << bits << " n " << n;
    }
  }
}

// The layout by hand. 3 bits: 1, -1, 3, -4 are 001, 111, 011, 100 from bit 0 up:
// 1 | 7 << 3 | 3 << 6 | 4 << 9 = 0x8F9. 1 bit: +1 -1 -1 +1 +1 +1 -1 -1 +1 = 0b1'00111001.
TEST(DeltaTest, PackLayout) {
  EXPECT_EQ(delta_pack(std::vector<int8_t>{1, -1, 3, -4}, 3), (std::vector<uint8_t>{0xF9, 0x08}));
  EXPECT_EQ(delta_pack(std::vector<int8_t>{1, -1, -1, 1, 1, 1, -1, -1, 1}, 1),
            (std::vector<uint8_t>{0x39, 0x01}));
  EXPECT_EQ(delta_pack(std::vector<int8_t>{-128, 127, -1}, 8),
            (std::vector<uint8_t>{0x80, 0x7F, 0xFF}));
  EXPECT_EQ(delta_pack(std::vector<int8_t>{-2, 1, 0, -1}, 2), (std::vector<uint8_t>{0xC6}));
}

TEST(DeltaTest, PackRejects) {
  EXPECT_THROW(delta_pack(std::vector<int8_t>{4}, 3), Error);
  EXPECT_THROW(delta_pack(std::vector<int8_t>{-5}, 3), Error);
  EXPECT_THROW(delta_pack(std::vector<int8_t>{0}, 1), Error);
  EXPECT_THROW(delta_pack(std::vector<int8_t>{1}, 9), Error);
  EXPECT_THROW(delta_unpack(std::vector<uint8_t>{0, 0}, 6, 3), Error);  // 18 bits: 3 bytes
  EXPECT_THROW(delta_unpack(std::vector<uint8_t>{0, 0, 0}, 5, 3), Error);
  EXPECT_NO_THROW(delta_unpack(std::vector<uint8_t>{0, 0}, 5, 3));  // 15 bits: 2 bytes
}

// Quantize, pack, unpack: the codes come back for every bits.
TEST(DeltaTest, QuantizePackRoundTrip) {
  const std::vector<float> d = randn_f(31 * 9, 17);
  for (int64_t bits = 1; bits <= 8; bits++) {
    const QuantDelta q = delta_quantize(d, 31, 9, bits);
    EXPECT_EQ(delta_unpack(delta_pack(q.codes, bits), 31 * 9, bits), q.codes) << bits;
  }
}

// ----------------------------------------------------------------------------
// low-rank

// Full rank rebuilds delta to float rounding (max error 1e-5 of max |delta|), both shapes;
// sum s^2 = ||delta||_F^2; singular values descending.
TEST(DeltaTest, LowRankFullRankExact) {
  for (const auto& [in, out] : std::vector<std::pair<int64_t, int64_t>>{{40, 24}, {24, 40}}) {
    const std::vector<float> d = randn_f(in * out, 18);
    const int64_t k = std::min(in, out);
    const LowRankDelta lr = delta_lowrank(d, in, out, k);
    ASSERT_EQ(int64_t(lr.A.size()), k * in);
    ASSERT_EQ(int64_t(lr.B.size()), out * k);
    ASSERT_EQ(int64_t(lr.singular.size()), k);
    const std::vector<double> R = rebuild(lr, in, out, k);
    double mx = 0, err = 0, norm2 = 0, s2 = 0;
    for (size_t i = 0; i < d.size(); i++) {
      mx = std::max(mx, std::abs(double(d[i])));
      err = std::max(err, std::abs(double(d[i]) - R[i]));
      norm2 += double(d[i]) * double(d[i]);
    }
    EXPECT_LE(err, 1e-5 * mx) << in << "x" << out;
    for (size_t j = 0; j < lr.singular.size(); j++) {
      s2 += lr.singular[j] * lr.singular[j];
      if (j > 0) {
        EXPECT_GE(lr.singular[j - 1], lr.singular[j]);
      }
    }
    EXPECT_NEAR(s2, norm2, 1e-10 * norm2);
  }
}

// A matrix with known singular values: delta[i, o] = sigma_o at i = o (in = 5, out = 3), the
// columns permuted so that they are not already sorted.
TEST(DeltaTest, LowRankKnownSingularValues) {
  std::vector<float> d(15, 0.0f);
  d[0 * 3 + 1] = 2.0f;
  d[1 * 3 + 0] = -3.0f;
  d[4 * 3 + 2] = 0.5f;
  const LowRankDelta lr = delta_lowrank(d, 5, 3, 1);
  ASSERT_EQ(lr.singular.size(), 3u);
  EXPECT_NEAR(lr.singular[0], 3.0, 1e-12);
  EXPECT_NEAR(lr.singular[1], 2.0, 1e-12);
  EXPECT_NEAR(lr.singular[2], 0.5, 1e-12);
  // rank 1 keeps the -3 alone.
  const std::vector<double> R = rebuild(lr, 5, 3, 1);
  for (int64_t i = 0; i < 15; i++) EXPECT_NEAR(R[size_t(i)], i == 3 ? -3.0 : 0.0, 1e-6) << i;
}

// Eckart-Young: the rank-r error in Frobenius norm is sqrt(sum_{j >= r} s_j^2), to 1e-4.
TEST(DeltaTest, LowRankEckartYoung) {
  const int64_t in = 48, out = 30;
  const std::vector<float> d = randn_f(in * out, 19);
  for (int64_t rank : {1, 5, 12, 25}) {
    const LowRankDelta lr = delta_lowrank(d, in, out, rank);
    ASSERT_EQ(int64_t(lr.A.size()), rank * in);
    ASSERT_EQ(int64_t(lr.B.size()), out * rank);
    double tail = 0;
    for (size_t j = size_t(rank); j < lr.singular.size(); j++)
      tail += lr.singular[j] * lr.singular[j];
    EXPECT_NEAR(frobenius_diff(d, rebuild(lr, in, out, rank)), std::sqrt(tail),
                1e-4 * std::sqrt(tail))
        << "rank " << rank;
  }
}

// A rank-3 delta: rank 3 rebuilds it, the singular values past the third are zero.
TEST(DeltaTest, LowRankOfLowRankMatrix) {
  const int64_t in = 20, out = 16;
  const std::vector<double> u = randn(3 * in, 20), v = randn(3 * out, 21);
  std::vector<float> d(static_cast<size_t>(in * out));
  for (int64_t i = 0; i < in; i++)
    for (int64_t o = 0; o < out; o++) {
      double x = 0;
      for (int64_t r = 0; r < 3; r++) x += u[size_t(r * in + i)] * v[size_t(r * out + o)];
      d[size_t(i * out + o)] = float(x);
    }
  const LowRankDelta lr = delta_lowrank(d, in, out, 3);
  for (size_t j = 3; j < lr.singular.size(); j++) EXPECT_LT(lr.singular[j], 1e-5 * lr.singular[0]);
  const std::vector<double> R = rebuild(lr, in, out, 3);
  double mx = 0;
  for (float x : d) mx = std::max(mx, std::abs(double(x)));
  for (size_t i = 0; i < d.size(); i++) EXPECT_NEAR(R[i], d[i], 1e-5 * mx) << i;
}

TEST(DeltaTest, LowRankBadRank) {
  const std::vector<float> d = randn_f(40 * 24, 22);
  EXPECT_THROW(delta_lowrank(d, 40, 24, 25), Error);
  EXPECT_THROW(delta_lowrank(d, 40, 24, 0), Error);
  try {
    delta_lowrank(d, 24, 40, 30);
    ADD_FAILURE() << "rank 30 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "delta_lowrank: rank 30 exceeds the matrix rank bound min(in, out) = 24");
  }
}

TEST(DeltaTest, NonFiniteRefused) {
  std::vector<float> d(12, 1.0f);
  d[5] = std::nanf("");
  EXPECT_THROW(delta_topk_positions(d, 3), Error);
  EXPECT_THROW(delta_quantize(d, 3, 4, 4), Error);
  EXPECT_THROW(delta_lowrank(d, 3, 4, 2), Error);
}
