// Every op: the float kernel against the double scalar reference (forward and backward), and
// the double kernel against central finite differences. A new op joins this file.
#include <gtest/gtest.h>

#include <numeric>

#include "backend/reference.hpp"
#include "kernels/gemm.hpp"
#include "kernels/kernels.hpp"
#include "kernels/parallel.hpp"
#include "test_util.hpp"

using namespace moelab;
using namespace moelab::test;
namespace K = moelab::kernels;

constexpr double kRtol32 = 2e-5, kAtol32 = 2e-6;  // float kernel vs double reference

// ----------------------------------------------------------------------------
TEST(Ops, Embedding) {
  const int64_t V = 11, d = 45, N = 30;
  std::vector<int32_t> tok(N);
  for (int64_t n = 0; n < N; n++) tok[n] = int32_t((n * 7) % V);  // repeated ids
  auto W = randn(V * d, 1), R = randn(N * d, 2);
  std::vector<float> out32(N * d), dW32(V * d, 0.f);
  std::vector<double> out(N * d), dW(V * d, 0.0);
  K::embedding<float>::forward(out32.data(), tok.data(), cast<float>(W).data(), N, d);
  ref::embedding<double>::forward(out.data(), tok.data(), W.data(), N, d);
  expect_close(out32, out, kRtol32, kAtol32, "embedding forward");
  K::embedding<float>::backward(dW32.data(), cast<float>(R).data(), tok.data(), N, d);
  ref::embedding<double>::backward(dW.data(), R.data(), tok.data(), N, d);
  expect_close(dW32, dW, kRtol32, kAtol32, "embedding backward");
  std::vector<double> g(V * d, 0.0);
  K::embedding<double>::backward(g.data(), R.data(), tok.data(), N, d);
  expect_fd(
      W, g,
      [&] {
        K::embedding<double>::forward(out.data(), tok.data(), W.data(), N, d);
        return dot(out, R);
      },
      "embedding dW");
}

// ----------------------------------------------------------------------------
TEST(Ops, RmsNorm) {
  const int64_t N = 7, d = 67;
  auto x = randn(N * d, 1), g = randn(d, 2, 0.3), R = randn(N * d, 3);
  for (double& v : g) v += 1.0;
  std::vector<float> o32(N * d), r32(N), dx32(N * d, 0.f), dg32(d, 0.f);
  std::vector<double> o(N * d), r(N), dx(N * d, 0.0), dg(d, 0.0);
  K::rmsnorm<float>::forward(o32.data(), r32.data(), cast<float>(x).data(), cast<float>(g).data(),
                             N, d, 1e-5);
  ref::rmsnorm<double>::forward(o.data(), r.data(), x.data(), g.data(), N, d, 1e-5);
  expect_close(o32, o, kRtol32, kAtol32, "rmsnorm forward");
  K::rmsnorm<float>::backward(dx32.data(), dg32.data(), cast<float>(R).data(),
                              cast<float>(x).data(), cast<float>(g).data(), r32.data(), N, d);
  ref::rmsnorm<double>::backward(dx.data(), dg.data(), R.data(), x.data(), g.data(), r.data(), N,
                                 d);
  expect_close(dx32, dx, kRtol32, kAtol32, "rmsnorm dx");
  expect_close(dg32, dg, kRtol32, kAtol32, "rmsnorm dg");

  std::vector<double> gx(N * d, 0.0), gg(d, 0.0);
  K::rmsnorm<double>::forward(o.data(), r.data(), x.data(), g.data(), N, d, 1e-5);
  K::rmsnorm<double>::backward(gx.data(), gg.data(), R.data(), x.data(), g.data(), r.data(), N, d);
  auto loss = [&] {
    K::rmsnorm<double>::forward(o.data(), r.data(), x.data(), g.data(), N, d, 1e-5);
    return dot(o, R);
  };
  expect_fd(x, gx, loss, "rmsnorm dx");
  expect_fd(g, gg, loss, "rmsnorm dg");
}

// ----------------------------------------------------------------------------
class LinearOps : public ::testing::TestWithParam<std::tuple<K::WLayout, bool>> {};

TEST_P(LinearOps, MatchesReferenceAndFiniteDifferences) {
  const auto [layout, bias] = GetParam();
  const int64_t N = 9, I = 23, O = 17;
  auto x = randn(N * I, 1), W = randn(O * I, 2, 0.2), b = randn(O, 3), R = randn(N * O, 4);
  const double* bp = bias ? b.data() : nullptr;
  std::vector<float> o32(N * O), dx32(N * I), dW32(O * I, 0.f), db32(O, 0.f);
  std::vector<double> o(N * O), dx(N * I), dW(O * I, 0.0), db(O, 0.0);
  const auto b32 = cast<float>(b);
  K::linear<float>::forward(o32.data(), cast<float>(x).data(), cast<float>(W).data(),
                            bias ? b32.data() : nullptr, N, I, O, layout);
  ref::linear<double>::forward(o.data(), x.data(), W.data(), bp, N, I, O, layout);
  expect_close(o32, o, kRtol32, kAtol32, "linear forward");
  K::linear<float>::backward(dx32.data(), dW32.data(), db32.data(), cast<float>(R).data(),
                             cast<float>(x).data(), cast<float>(W).data(), N, I, O, layout);
  ref::linear<double>::backward(dx.data(), dW.data(), db.data(), R.data(), x.data(), W.data(), N, I,
                                O, layout);
  expect_close(dx32, dx, kRtol32, kAtol32, "linear dx");
  expect_close(dW32, dW, kRtol32, kAtol32, "linear dW");
  expect_close(db32, db, kRtol32, kAtol32, "linear db");

  std::vector<double> gx(N * I), gW(O * I, 0.0), gb(O, 0.0);
  K::linear<double>::backward(gx.data(), gW.data(), gb.data(), R.data(), x.data(), W.data(), N, I,
                              O, layout);
  auto loss = [&] {
    K::linear<double>::forward(o.data(), x.data(), W.data(), bias ? b.data() : nullptr, N, I, O,
                               layout);
    return dot(o, R);
  };
  expect_fd(x, gx, loss, "linear dx");
  expect_fd(W, gW, loss, "linear dW");
  if (bias) expect_fd(b, gb, loss, "linear db");
  // dx accumulate mode adds onto what is there
  std::vector<double> acc(N * I, 1.0);
  K::linear<double>::backward(acc.data(), nullptr, nullptr, R.data(), x.data(), W.data(), N, I, O,
                              layout, true);
  for (size_t i = 0; i < acc.size(); i++) EXPECT_NEAR(acc[i], gx[i] + 1.0, 1e-12);
}

INSTANTIATE_TEST_SUITE_P(Layouts, LinearOps,
                         ::testing::Combine(::testing::Values(K::WLayout::OutIn, K::WLayout::InOut),
                                            ::testing::Bool()));

TEST(Ops, LinearZeroRows) {
  // An expert that received no tokens: nothing is written, and the gradients accumulated so far
  // are kept (a GEMM called with beta = 0 on zero rows would wipe them).
  std::vector<float> W(12, 1.f), dW(12, 0.5f), db(3, 0.25f), out(3, 7.f), dx(4, 9.f);
  const std::vector<float> x(4, 1.f), dout(3, 1.f);
  for (const K::WLayout layout : {K::WLayout::InOut, K::WLayout::OutIn})
    for (const bool accumulate : {false, true}) {
      K::linear<float>::forward(out.data(), x.data(), W.data(), db.data(), 0, 4, 3, layout);
      K::linear<float>::backward(dx.data(), dW.data(), db.data(), dout.data(), x.data(), W.data(),
                                 0, 4, 3, layout, accumulate);
    }
  for (float v : dW) EXPECT_EQ(v, 0.5f);
  for (float v : db) EXPECT_EQ(v, 0.25f);
  for (float v : out) EXPECT_EQ(v, 7.f);
  for (float v : dx) EXPECT_EQ(v, 9.f);
}

// ----------------------------------------------------------------------------
TEST(Ops, RopeYarnTablesMatchSpec) {
  // methods.md §3.4 values for gpt-oss: d_h 64, theta 150000, factor 32, L0 4096.
  const int64_t hd = 64, half = 32, T = 2;
  std::vector<double> c(T * half), s(T * half);
  K::RopeParams p{150000.0, 32.0, 32.0, 1.0, 4096};
  K::rope<double>::tables(c.data(), s.data(), T, hd, p);
  auto inv = [&](int i) { return std::atan2(s[half + i], c[half + i]); };  // angle at t = 1
  EXPECT_NEAR(std::hypot(c[half], s[half]), 1.3465736, 1e-7);              // concentration
  EXPECT_NEAR(inv(0), 1.0, 1e-9);
  EXPECT_NEAR(inv(8), 0.0508133, 1e-7);
  EXPECT_NEAR(inv(18), 3.831e-5, 1e-8);
  EXPECT_NEAR(inv(31), 3.0235e-7, 1e-11);
  EXPECT_NEAR(c[0], 1.3465736, 1e-7);  // t = 0: no rotation, only the scale
}

TEST(Ops, Rope) {
  const int64_t N = 12, seq = 6, nh = 3, hd = 8, stride = 30;  // heads inside wider rows
  std::vector<double> c(seq * hd / 2), s(seq * hd / 2);
  K::rope<double>::tables(c.data(), s.data(), seq, hd, K::RopeParams{10000.0, 4.0, 32, 1, 4});
  auto x = randn(N * stride, 1), R = randn(N * stride, 2);
  auto y32 = cast<float>(x);
  auto y = x;
  K::rope<float>::forward(y32.data(), N, seq, nh, hd, stride, cast<float>(c).data(),
                          cast<float>(s).data());
  ref::rope<double>::forward(y.data(), N, seq, nh, hd, stride, c.data(), s.data());
  expect_close(y32, y, kRtol32, kAtol32, "rope forward");
  for (int64_t n = 0; n < N; n++)  // columns outside the heads are untouched
    for (int64_t i = nh * hd; i < stride; i++) EXPECT_EQ(y[n * stride + i], x[n * stride + i]);
  auto g = R;
  K::rope<double>::backward(g.data(), N, seq, nh, hd, stride, c.data(), s.data());
  auto gr = R;
  ref::rope<double>::backward(gr.data(), N, seq, nh, hd, stride, c.data(), s.data());
  expect_close(g, gr, 1e-12, 1e-14, "rope backward vs reference");
  expect_fd(
      x, g,
      [&] {
        auto t = x;
        K::rope<double>::forward(t.data(), N, seq, nh, hd, stride, c.data(), s.data());
        return dot(t, R);
      },
      "rope dx");
}

// ----------------------------------------------------------------------------
struct AttnCase {
  int64_t B, T, H, KV, hd, window;
  bool sinks;
};

class AttentionOps : public ::testing::TestWithParam<AttnCase> {};

TEST_P(AttentionOps, MatchesReferenceAndFiniteDifferences) {
  const AttnCase p = GetParam();
  const K::AttnShape s{p.B, p.T, p.H, p.KV, p.hd, p.window, 1.0 / std::sqrt(double(p.hd))};
  const int64_t C = (p.H + 2 * p.KV) * p.hd, N = p.B * p.T, OC = p.H * p.hd;
  auto qkv = randn(N * C, 1), sinks = randn(p.H, 2), R = randn(N * OC, 3);
  const double* sp = p.sinks ? sinks.data() : nullptr;
  const auto qkv32 = cast<float>(qkv), sinks32 = cast<float>(sinks), R32 = cast<float>(R);
  const float* sp32 = p.sinks ? sinks32.data() : nullptr;
  std::vector<float> o32(N * OC), l32(N * p.H), dq32(N * C), ds32(p.H, 0.f);
  std::vector<double> o(N * OC), l(N * p.H), dq(N * C), ds(p.H, 0.0);
  K::attention<float>::forward(o32.data(), l32.data(), qkv32.data(), sp32, s);
  ref::attention<double>::forward(o.data(), l.data(), qkv.data(), sp, s);
  expect_close(o32, o, kRtol32, kAtol32, "attention forward");
  expect_close(l32, l, kRtol32, kAtol32, "attention lse");
  K::attention<float>::backward(dq32.data(), p.sinks ? ds32.data() : nullptr, R32.data(),
                                qkv32.data(), sp32, o32.data(), l32.data(), s);
  ref::attention<double>::backward(dq.data(), p.sinks ? ds.data() : nullptr, R.data(), qkv.data(),
                                   sp, o.data(), l.data(), s);
  expect_close(dq32, dq, 1e-4, 1e-5, "attention dqkv");
  if (p.sinks) expect_close(ds32, ds, 1e-4, 1e-5, "attention dsinks");

  std::vector<double> gq(N * C), gs(p.H, 0.0);
  K::attention<double>::forward(o.data(), l.data(), qkv.data(), sp, s);
  K::attention<double>::backward(gq.data(), p.sinks ? gs.data() : nullptr, R.data(), qkv.data(), sp,
                                 o.data(), l.data(), s);
  expect_close(gq, dq, 1e-10, 1e-12, "attention dqkv, double kernel vs reference");
  auto loss = [&] {
    K::attention<double>::forward(o.data(), l.data(), qkv.data(), p.sinks ? sinks.data() : nullptr,
                                  s);
    return dot(o, R);
  };
  expect_fd(qkv, gq, loss, "attention dqkv", 1e-6, 1e-5, 1e-7, 300);
  if (p.sinks) expect_fd(sinks, gs, loss, "attention dsinks");
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionOps,
    ::testing::Values(AttnCase{1, 5, 2, 2, 4, 0, false},    // tiny, MHA
                      AttnCase{2, 37, 4, 2, 8, 0, true},    // GQA, sinks, partial tile
                      AttnCase{2, 37, 4, 1, 8, 5, true},    // MQA + sliding window
                      AttnCase{1, 100, 2, 1, 8, 40, true},  // window across tile borders
                      AttnCase{1, 130, 2, 2, 4, 0, false},  // several key blocks
                      AttnCase{1, 70, 4, 2, 6, 1, true}));  // window 1: attends to self only

// ----------------------------------------------------------------------------
// attention_decode: the decoder's step against the reference and against the training kernel's
// row for the same position (keys and values cached from the same qkv rows).
TEST_P(AttentionOps, DecodeStepMatchesReferenceAndTrainingRow) {
  const AttnCase p = GetParam();
  const K::AttnShape s{p.B, p.T, p.H, p.KV, p.hd, p.window, 1.0 / std::sqrt(double(p.hd))};
  const int64_t C = (p.H + 2 * p.KV) * p.hd, N = p.B * p.T, OC = p.H * p.hd, L = p.T + 3;
  const auto qkv = randn(N * C, 11), sinks = randn(p.H, 12);
  const double* sp = p.sinks ? sinks.data() : nullptr;
  std::vector<double> K(p.B * p.KV * p.hd * L), V(p.B * L * p.KV * p.hd);  // the cache
  for (int64_t b = 0; b < p.B; b++)
    for (int64_t j = 0; j < p.T; j++)
      for (int64_t i = 0; i < p.KV * p.hd; i++) {
        const double* row = qkv.data() + (b * p.T + j) * C;
        K[(b * p.KV * p.hd + i) * L + j] = row[OC + i];
        V[(b * L + j) * p.KV * p.hd + i] = row[OC + p.KV * p.hd + i];
      }
  std::vector<double> full(N * OC), lse(N * p.H);
  K::attention<double>::forward(full.data(), lse.data(), qkv.data(), sp, s);
  for (int64_t t : {int64_t(0), p.T / 2, p.T - 1}) {
    std::vector<double> q(p.B * C), kern(p.B * OC), ref_out(p.B * OC), row(p.B * OC);
    for (int64_t b = 0; b < p.B; b++) {
      std::copy_n(qkv.data() + (b * p.T + t) * C, C, q.data() + b * C);
      std::copy_n(full.data() + (b * p.T + t) * OC, OC, row.data() + b * OC);
    }
    const std::vector<int64_t> pos(size_t(p.B), t);
    K::attention_decode<double>::forward(kern.data(), q.data(), K.data(), V.data(), L, sp,
                                         pos.data(), nullptr, s);
    ref::attention_decode<double>::forward(ref_out.data(), q.data(), K.data(), V.data(), L, sp,
                                           pos.data(), nullptr, s);
    expect_close(kern, ref_out, 1e-12, 1e-13, "attention_decode vs reference");
    expect_close(kern, row, 1e-12, 1e-13, "attention_decode vs the training kernel's row");
    const auto q32 = cast<float>(q), K32 = cast<float>(K), V32 = cast<float>(V);
    const auto s32 = cast<float>(sinks);
    std::vector<float> o32(p.B * OC);
    K::attention_decode<float>::forward(o32.data(), q32.data(), K32.data(), V32.data(), L,
                                        p.sinks ? s32.data() : nullptr, pos.data(), nullptr, s);
    expect_close(o32, ref_out, kRtol32, kAtol32, "attention_decode float vs reference");
  }
  // Sequences at different positions, each in another cache slot (slots listed in reverse):
  // every row equals the training kernel's row of its own sequence and position.
  std::vector<int64_t> pos(size_t(p.B)), slot(size_t(p.B));
  std::vector<double> q(p.B * C), kern(p.B * OC), ref_out(p.B * OC), row(p.B * OC);
  for (int64_t i = 0; i < p.B; i++) {
    const int64_t b = p.B - 1 - i;  // sequence i reads slot b
    pos[size_t(i)] = (p.T - 1) * (i + 1) / (p.B + 1), slot[size_t(i)] = b;
    std::copy_n(qkv.data() + (b * p.T + pos[size_t(i)]) * C, C, q.data() + i * C);
    std::copy_n(full.data() + (b * p.T + pos[size_t(i)]) * OC, OC, row.data() + i * OC);
  }
  K::attention_decode<double>::forward(kern.data(), q.data(), K.data(), V.data(), L, sp, pos.data(),
                                       slot.data(), s);
  ref::attention_decode<double>::forward(ref_out.data(), q.data(), K.data(), V.data(), L, sp,
                                         pos.data(), slot.data(), s);
  expect_close(kern, ref_out, 1e-12, 1e-13, "attention_decode per-sequence positions vs reference");
  expect_close(kern, row, 1e-12, 1e-13, "attention_decode per-sequence positions vs training");
}

// ----------------------------------------------------------------------------
TEST(Ops, Add) {
  const auto a = randn(1000, 1), b = randn(1000, 2);
  std::vector<double> out(1000), want(1000), inplace = a;
  K::add<double>::forward(out.data(), a.data(), b.data(), 1000);
  ref::add<double>::forward(want.data(), a.data(), b.data(), 1000);
  EXPECT_EQ(out, want);
  K::add<double>::forward(inplace.data(), inplace.data(), b.data(), 1000);  // out aliases a
  EXPECT_EQ(inplace, want);
}

// ----------------------------------------------------------------------------
// fusion (MoE-CT's gate): per-row a and one a for all rows
TEST(Ops, Fusion) {
  const int64_t N = 7, d = 5;
  for (int64_t stride : {1, 0}) {
    auto F = randn(N * d, 1), M = randn(N * d, 2), a = randn(N, 3, 0.5), R = randn(N * d, 4);
    std::vector<double> out(N * d), want(N * d), dF(N * d), dM(N * d), da(N);
    std::vector<double> rF(N * d), rM(N * d), rda(N);
    K::fusion<double>::forward(out.data(), F.data(), M.data(), a.data(), stride, N, d);
    ref::fusion<double>::forward(want.data(), F.data(), M.data(), a.data(), stride, N, d);
    expect_close(out, want, 1e-14, 1e-15, "fusion forward");
    K::fusion<double>::backward(dF.data(), dM.data(), da.data(), R.data(), F.data(), M.data(),
                                a.data(), stride, N, d);
    ref::fusion<double>::backward(rF.data(), rM.data(), rda.data(), R.data(), F.data(), M.data(),
                                  a.data(), stride, N, d);
    expect_close(dF, rF, 1e-14, 1e-15, "fusion dF");
    expect_close(dM, rM, 1e-14, 1e-15, "fusion dM");
    expect_close(da, rda, 1e-13, 1e-14, "fusion da");
    auto loss = [&] {
      K::fusion<double>::forward(out.data(), F.data(), M.data(), a.data(), stride, N, d);
      return dot(out, R);
    };
    expect_fd(F, dF, loss, "fusion dF");
    expect_fd(M, dM, loss, "fusion dM");
    std::vector<double> ga(N, 0.0);  // d(a): per row, or summed over the rows sharing one a
    for (int64_t n = 0; n < N; n++) ga[size_t(n * stride)] += da[size_t(n)];
    if (stride == 0) ga.resize(1), a.resize(1);
    expect_fd(a, ga, loss, "fusion da");
    // a = 0 gives F to the bit (MoE-CT's gate closed)
    std::vector<double> zero(N, 0.0);
    K::fusion<double>::forward(out.data(), F.data(), M.data(), zero.data(), stride, N, d);
    EXPECT_EQ(out, F);
  }
}

// ----------------------------------------------------------------------------
TEST(Ops, SwiGlu) {
  const int64_t N = 6, I = 40;
  const double limit = 7.0, alpha = 1.702;
  auto h = randn(N * 2 * I, 1, 5.0), R = randn(N * I, 2);
  for (double& v : h)  // keep finite differences away from the clamp kinks
    if (std::abs(std::abs(v) - limit) < 1e-3) v += 0.01;
  std::vector<float> o32(N * I), dh32(N * 2 * I);
  std::vector<double> o(N * I), dh(N * 2 * I);
  K::swiglu<float>::forward(o32.data(), cast<float>(h).data(), N, I, limit, alpha);
  ref::swiglu<double>::forward(o.data(), h.data(), N, I, limit, alpha);
  expect_close(o32, o, kRtol32, kAtol32, "swiglu forward");
  K::swiglu<float>::backward(dh32.data(), cast<float>(R).data(), cast<float>(h).data(), N, I, limit,
                             alpha);
  ref::swiglu<double>::backward(dh.data(), R.data(), h.data(), N, I, limit, alpha);
  expect_close(dh32, dh, kRtol32, kAtol32, "swiglu backward");
  int clamped = 0;
  for (int64_t i = 0; i < N * I; i++) clamped += h[2 * i] > limit || std::abs(h[2 * i + 1]) > limit;
  EXPECT_GT(clamped, 5) << "the test should cover the clamps";
  std::vector<double> g(N * 2 * I);
  K::swiglu<double>::backward(g.data(), R.data(), h.data(), N, I, limit, alpha);
  expect_fd(
      h, g,
      [&] {
        K::swiglu<double>::forward(o.data(), h.data(), N, I, limit, alpha);
        return dot(o, R);
      },
      "swiglu dh", 1e-6, 1e-5, 1e-7, 1000);
}

// ----------------------------------------------------------------------------
TEST(Ops, RouterTopkSoftmax) {
  const int64_t N = 13, E = 8, k = 3;
  auto z = randn(N * E, 1, 2.0), R = randn(N * k, 2);
  std::vector<int32_t> idx(N * k), idx_ref(N * k);
  std::vector<float> w32(N * k);
  std::vector<double> w(N * k);
  K::router<float>::forward(idx.data(), w32.data(), cast<float>(z).data(), nullptr, N, E, k);
  ref::router<double>::forward(idx_ref.data(), w.data(), z.data(), N, E, k);
  EXPECT_EQ(idx, idx_ref);
  expect_close(w32, w, kRtol32, kAtol32, "router weights");
  std::vector<double> dz(N * E), dz_ref(N * E);
  K::router<double>::forward(idx.data(), w.data(), z.data(), nullptr, N, E, k);
  K::router<double>::backward(dz.data(), R.data(), w.data(), idx.data(), N, E, k);
  ref::router<double>::backward(dz_ref.data(), R.data(), w.data(), idx.data(), N, E, k);
  expect_close(dz, dz_ref, 1e-12, 1e-14, "router backward vs reference");
  expect_fd(
      z, dz,
      [&] {  // small steps do not change the top-k set of these logits
        K::router<double>::forward(idx.data(), w.data(), z.data(), nullptr, N, E, k);
        return dot(w, R);
      },
      "router dlogits");
}

TEST(Ops, RouterTiesPickLowerIndex) {
  const int64_t E = 6, k = 2;
  std::vector<float> z = {1, 3, 3, 0, 3, 2};  // three-way tie at the top
  std::vector<int32_t> idx(k);
  std::vector<float> w(k);
  K::router<float>::forward(idx.data(), w.data(), z.data(), nullptr, 1, E, k);
  EXPECT_EQ(idx[0], 1);
  EXPECT_EQ(idx[1], 2);
  EXPECT_FLOAT_EQ(w[0], 0.5f);
  EXPECT_FLOAT_EQ(w[1], 0.5f);
  std::vector<float> flat(E, 0.f);  // all equal
  K::router<float>::forward(idx.data(), w.data(), flat.data(), nullptr, 1, E, k);
  EXPECT_EQ(idx[0], 0);
  EXPECT_EQ(idx[1], 1);
}

TEST(Ops, RouterLosses) {
  const int64_t N = 17, E = 5, k = 2;
  const double ca = 0.03, cz = 0.002;
  auto z = randn(N * E, 1, 1.5);
  std::vector<int32_t> idx(N * k);
  std::vector<double> w(N * k);
  K::router<double>::forward(idx.data(), w.data(), z.data(), nullptr, N, E, k);
  const auto got = K::router<double>::loss_forward(z.data(), idx.data(), N, E, k, ca, cz);
  const auto want = ref::router<double>::loss_forward(z.data(), idx.data(), N, E, k, ca, cz);
  EXPECT_NEAR(got.aux, want.aux, 1e-12);
  EXPECT_NEAR(got.z, want.z, 1e-12);
  // Perfect balance with uniform probabilities gives aux = coef exactly.
  std::vector<double> zu(4 * 4, 0.0);
  std::vector<int32_t> iu = {0, 1, 2, 3};
  EXPECT_NEAR(K::router<double>::loss_forward(zu.data(), iu.data(), 4, 4, 1, 1.0, 0.0).aux, 1.0,
              1e-12);
  std::vector<double> g(N * E, 0.0);
  K::router<double>::loss_backward(g.data(), z.data(), idx.data(), N, E, k, ca, cz, 1.0);
  expect_fd(
      z, g,
      [&] {  // the routing (idx) is held fixed: f carries no gradient
        const auto l = K::router<double>::loss_forward(z.data(), idx.data(), N, E, k, ca, cz);
        return l.aux + l.z;
      },
      "router aux+z dlogits");
}

// ----------------------------------------------------------------------------
TEST(Ops, MoeSortEdgeCases) {
  const int64_t N = 5, E = 4, k = 1;
  std::vector<int32_t> idx(N, 2);  // every token to expert 2; experts 0, 1, 3 get none
  std::vector<int32_t> order(N), pos(N);
  std::vector<int64_t> off(E + 1);
  K::moe_sort(order.data(), pos.data(), off.data(), idx.data(), N, E, k);
  EXPECT_EQ(off, (std::vector<int64_t>{0, 0, 0, 5, 5}));
  for (int64_t n = 0; n < N; n++) {
    EXPECT_EQ(order[n], n);  // stable: token order within the expert
    EXPECT_EQ(pos[n], n);
  }
}

TEST(Ops, MoeGatherCombine) {
  const int64_t N = 9, E = 4, k = 2, d = 5;
  std::vector<int32_t> idx = {0, 3, 3, 1, 1, 0, 3, 0, 2, 3, 0, 1, 1, 3, 3, 2, 0, 2};
  std::vector<int32_t> order(N * k), pos(N * k);
  std::vector<int64_t> off(E + 1);
  K::moe_sort(order.data(), pos.data(), off.data(), idx.data(), N, E, k);
  for (int64_t e = 0; e < E; e++)
    for (int64_t r = off[e]; r < off[e + 1]; r++) {
      const int64_t n = order[r];
      EXPECT_TRUE(idx[n * k] == e || idx[n * k + 1] == e);
    }
  const K::MoeRouting rt{N, E, k, order.data(), pos.data(), off.data()};
  auto x = randn(N * d, 1), y = randn(N * k * d, 2), w = randn(N * k, 3), R = randn(N * d, 4);
  auto Rx = randn(N * k * d, 5);
  std::vector<double> xe(N * k * d), out(N * d);
  K::moe_gather<double>::forward(xe.data(), x.data(), rt, d);
  for (int64_t n = 0; n < N; n++)
    for (int64_t j = 0; j < k; j++)
      for (int64_t c = 0; c < d; c++) EXPECT_EQ(xe[pos[n * k + j] * d + c], x[n * d + c]);
  std::vector<double> gx(N * d, 0.0);
  K::moe_gather<double>::backward(gx.data(), Rx.data(), rt, d);
  expect_fd(
      x, gx,
      [&] {
        K::moe_gather<double>::forward(xe.data(), x.data(), rt, d);
        return dot(xe, Rx);
      },
      "moe gather dx");
  std::vector<double> dy(N * k * d), dw(N * k);
  K::moe_combine<double>::backward(dy.data(), dw.data(), R.data(), y.data(), w.data(), rt, d);
  auto loss = [&] {
    K::moe_combine<double>::forward(out.data(), y.data(), w.data(), rt, d);
    return dot(out, R);
  };
  expect_fd(y, dy, loss, "moe combine dy");
  expect_fd(w, dw, loss, "moe combine dw");
}

// ----------------------------------------------------------------------------
TEST(Ops, CrossEntropy) {
  const int64_t N = 8, V = 50;
  auto z = randn(N * V, 1, 3.0);
  std::vector<int32_t> t = {3, 49, 0, -1, 7, 7, 22, -1};
  std::vector<float> l32(N);
  std::vector<double> l(N);
  const double s32 =
      K::cross_entropy<float>::forward(l32.data(), cast<float>(z).data(), t.data(), N, V);
  const double s = ref::cross_entropy<double>::forward(l.data(), z.data(), t.data(), N, V);
  EXPECT_NEAR(s32, s, 1e-4);
  expect_close(l32, l, kRtol32, kAtol32, "cross-entropy lse");
  std::vector<double> g(N * V);
  K::cross_entropy<double>::forward(l.data(), z.data(), t.data(), N, V);
  K::cross_entropy<double>::backward(g.data(), z.data(), l.data(), t.data(), N, V, 1.0 / 6);
  expect_fd(
      z, g,
      [&] { return K::cross_entropy<double>::forward(l.data(), z.data(), t.data(), N, V) / 6; },
      "cross-entropy dlogits");
  for (int64_t v = 0; v < V; v++) EXPECT_EQ(g[3 * V + v], 0.0);  // ignored row
  // in place (dlogits aliasing logits) gives the same numbers
  auto zi = z;
  K::cross_entropy<double>::backward(zi.data(), zi.data(), l.data(), t.data(), N, V, 1.0 / 6);
  expect_close(zi, g, 1e-14, 1e-16, "cross-entropy in place");
}

// ----------------------------------------------------------------------------
TEST(Ops, GemmDoubleAndFloat) {
  const int64_t M = 7, N = 5, Kd = 9;
  auto A = randn(Kd * M, 1), B = randn(N * Kd, 2), C = randn(M * N, 3);
  auto C64 = C;
  gemm<double>(Trans::T, Trans::T, M, N, Kd, 0.5, A.data(), M, B.data(), Kd, 2.0, C64.data(), N);
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      double s = 0;
      for (int64_t p = 0; p < Kd; p++) s += A[p * M + i] * B[j * Kd + p];
      EXPECT_NEAR(C64[i * N + j], 0.5 * s + 2.0 * C[i * N + j], 1e-12);
    }
}

TEST(Ops, LinearWideInOutTransposedPath) {
  // O > I and N >= O: dx goes through an explicit transpose of W and an NN product.
  const int64_t N = 40, I = 8, O = 32;
  auto x = randn(N * I, 1), W = randn(I * O, 2, 0.3), R = randn(N * O, 3);
  std::vector<double> dx(N * I), dx_ref(N * I), dW(I * O, 0.0), dW_ref(I * O, 0.0);
  const int64_t keep = parallel_min_work;
  parallel_min_work = 0;  // the transpose loop in parallel, too
  K::linear<double>::backward(dx.data(), dW.data(), nullptr, R.data(), x.data(), W.data(), N, I, O,
                              K::WLayout::InOut);
  parallel_min_work = keep;
  ref::linear<double>::backward(dx_ref.data(), dW_ref.data(), nullptr, R.data(), x.data(), W.data(),
                                N, I, O, K::WLayout::InOut);
  expect_close(dx, dx_ref, 1e-12, 1e-14, "wide linear dx");
  expect_close(dW, dW_ref, 1e-12, 1e-14, "wide linear dW");
  std::vector<float> dx32(N * I);
  K::linear<float>::backward(dx32.data(), nullptr, nullptr, cast<float>(R).data(),
                             cast<float>(x).data(), cast<float>(W).data(), N, I, O,
                             K::WLayout::InOut);
  expect_close(dx32, dx_ref, kRtol32, kAtol32, "wide linear dx, float");
}

// ----------------------------------------------------------------------------
// The ops of the glue between the blocks: the float kernel against the double reference, the
// double kernel against finite differences where the op is trained.

TEST(Ops, CrossEntropyBackwardMatchesReference) {
  const int64_t N = 6, V = 40;
  auto z = randn(N * V, 1, 3.0);
  std::vector<int32_t> t = {3, -1, 0, 39, 7, 7};
  std::vector<double> l(N), g(N * V), gr(N * V);
  K::cross_entropy<double>::forward(l.data(), z.data(), t.data(), N, V);
  K::cross_entropy<double>::backward(g.data(), z.data(), l.data(), t.data(), N, V, 0.25);
  ref::cross_entropy<double>::backward(gr.data(), z.data(), l.data(), t.data(), N, V, 0.25);
  expect_close(g, gr, 1e-12, 1e-14, "cross-entropy backward vs reference");
}

TEST(Ops, LogSumExpAndArgmax) {
  const int64_t N = 9, V = 70;
  const auto z = randn(N * V, 1, 4.0);
  std::vector<float> mx32(N);
  std::vector<double> mx(N), sum32(N), sum32d(N), sum(N);
  K::logsumexp<float>::forward(mx32.data(), sum32.data(), cast<float>(z).data(), N, V, false);
  K::logsumexp<float>::forward(mx32.data(), sum32d.data(), cast<float>(z).data(), N, V, true);
  ref::logsumexp<double>::forward(mx.data(), sum.data(), z.data(), N, V, true);
  expect_close(mx32, mx, kRtol32, kAtol32, "logsumexp max");
  expect_close(sum32, sum, kRtol32, kAtol32, "logsumexp sum in float");
  expect_close(sum32d, sum, kRtol32, kAtol32, "logsumexp sum in double");
  // the lse is the cross-entropy's, bit for bit
  std::vector<float> lse(N);
  const std::vector<int32_t> none(N, -1);
  K::cross_entropy<float>::forward(lse.data(), cast<float>(z).data(), none.data(), N, V);
  for (int64_t n = 0; n < N; n++) EXPECT_EQ(lse[n], mx32[n] + std::log(float(sum32[n])));
  std::vector<int32_t> idx(N), want(N);
  K::argmax<double>::forward(idx.data(), z.data(), N, V - 5, V);
  ref::argmax<double>::forward(want.data(), z.data(), N, V - 5, V);
  EXPECT_EQ(idx, want);
  const std::vector<float> ties = {1, 3, 3, NAN, 3};  // the first of the largest; NaN ignored
  int32_t at = -1;
  K::argmax<float>::forward(&at, ties.data(), 1, 5, 5);
  EXPECT_EQ(at, 1);
}

TEST(Ops, AdamWMatchesReference) {
  const int64_t n = 300;
  const auto p0 = randn(n, 1), g = randn(n, 2);
  std::vector<K::AdamWSpan> spans{{0, 0, 100, true}, {150, 100, 150, false}};  // 100..150 frozen
  const K::AdamWStep k{0.9, 0.95, 1e-8, 1e-2 / 0.1, std::sqrt(0.05), 0.5, 0.999};
  auto p32 = cast<float>(p0);
  std::vector<float> m32(250, 0.f), v32(250, 0.f);
  std::vector<double> p = p0, m(250, 0.0), v(250, 0.0);
  const int64_t keep = parallel_min_work;
  parallel_min_work = 0;  // chunks in parallel, crossing the spans
  K::adamw<float>::update(p32.data(), cast<float>(g).data(), m32.data(), v32.data(), spans.data(),
                          2, k);
  parallel_min_work = keep;
  ref::adamw<double>::update(p.data(), g.data(), m.data(), v.data(), spans.data(), 2, k);
  expect_close(p32, p, kRtol32, kAtol32, "adamw weights");
  expect_close(m32, m, kRtol32, kAtol32, "adamw first moments");
  expect_close(v32, v, kRtol32, kAtol32, "adamw second moments");
  for (int64_t i = 100; i < 150; i++) EXPECT_EQ(p32[i], float(p0[i]));  // frozen: untouched
}

TEST(Ops, VectorOpsMatchReference) {
  const int64_t n = 1000, rows = 7, cols = 3, stride = 5;
  const auto x = randn(n, 1);
  EXPECT_NEAR(K::vec<double>::sumsq(x.data(), n, 1.5), ref::vec<double>::sumsq(x.data(), n, 1.5),
              1e-10);
  EXPECT_NEAR(K::vec<double>::sum(x.data(), n), ref::vec<double>::sum(x.data(), n), 1e-10);
  auto a = randn(rows * stride, 2), b = a;
  K::vec<double>::scale(a.data(), -2.0, rows, cols, stride);
  ref::vec<double>::scale(b.data(), -2.0, rows, cols, stride);
  EXPECT_EQ(a, b);
  std::vector<double> f(n), fr(n);
  K::vec<double>::fill_normal(f.data(), n, 0.1, 3, 9);
  ref::vec<double>::fill_normal(fr.data(), n, 0.1, 3, 9);
  EXPECT_EQ(f, fr);
  K::vec<double>::fill(f.data(), 0.5, n);
  EXPECT_EQ(f, std::vector<double>(n, 0.5));
  const auto y = randn(n, 3), z = randn(n, 4);
  const double* v[3] = {x.data(), y.data(), z.data()};
  std::vector<double> G(9), Gr(9);
  K::vec<double>::gram(G.data(), v, 3, n);
  ref::vec<double>::gram(Gr.data(), v, 3, n);
  expect_close(G, Gr, 1e-12, 1e-12, "gram");
}

// Rows gathered by offset into a transposed store (column step 4) and into rows (step 1), on the
// parallel path too: the same bits as the reference's loop, which a copy must give.
TEST(Ops, RowsCopyMatchesReference) {
  const int64_t m = 4, cols = 6;
  const auto x = randn(40, 1);
  const std::vector<int64_t> src_at = {30, 2, 17, 2}, col_at = {3, 0, 2, 1},
                             row_at = {18, 0, 6, 12};
  const int64_t keep = parallel_min_work;
  for (const int64_t min_work : {keep, int64_t(0)}) {
    parallel_min_work = min_work;
    auto t = randn(m * cols, 2), tr = t, r = randn(m * cols, 3), rr = r;
    K::vec<double>::rows_copy(t.data(), col_at.data(), m, x.data(), src_at.data(), m, cols);
    ref::vec<double>::rows_copy(tr.data(), col_at.data(), m, x.data(), src_at.data(), m, cols);
    EXPECT_EQ(t, tr);
    EXPECT_EQ(t[size_t(2 * m + 3)], x[32]);  // row 0 (from 30), column 2, at position 3
    K::vec<double>::rows_copy(r.data(), row_at.data(), 1, x.data(), src_at.data(), m, cols);
    ref::vec<double>::rows_copy(rr.data(), row_at.data(), 1, x.data(), src_at.data(), m, cols);
    EXPECT_EQ(r, rr);
    EXPECT_EQ(r[size_t(18 + 5)], x[35]);
  }
  parallel_min_work = keep;
}

TEST(Ops, Sigmoid) {
  const int64_t n = 50;
  auto x = randn(n, 1, 3.0), R = randn(n, 2);
  std::vector<float> y32(n);
  std::vector<double> y(n), g(n);
  K::sigmoid<float>::forward(y32.data(), cast<float>(x).data(), n);
  ref::sigmoid<double>::forward(y.data(), x.data(), n);
  expect_close(y32, y, kRtol32, kAtol32, "sigmoid forward");
  K::sigmoid<double>::forward(y.data(), x.data(), n);
  K::sigmoid<double>::backward(g.data(), R.data(), y.data(), n);
  expect_fd(
      x, g,
      [&] {
        K::sigmoid<double>::forward(y.data(), x.data(), n);
        return dot(y, R);
      },
      "sigmoid dx");
}

TEST(Ops, LoraMergeAndExpand) {
  for (const K::WLayout layout : {K::WLayout::OutIn, K::WLayout::InOut}) {
    const int64_t I = 9, O = 14, R = 3;
    const K::LowRank s{I, O, R, 4, 6, 1.5, layout};
    const auto A = randn(R * I, 1), B = randn(s.out_n * R, 2), W = randn(I * O, 3);
    auto merged = W, expanded = W, want = W;
    const int64_t keep = parallel_min_work;
    parallel_min_work = 0;
    K::lora<double>::merge(merged.data(), A.data(), B.data(), s);
    parallel_min_work = keep;
    K::lora<double>::expand(expanded.data(), A.data(), B.data(), s);
    ref::lora<double>::merge(want.data(), A.data(), B.data(), s);
    expect_close(merged, want, 1e-13, 1e-14, "lora merge");
    expect_close(expanded, want, 1e-13, 1e-14, "lora expand");
    // the merged weight maps x as the base plus the adapter: W x + scale B (A x)
    std::vector<double> x = randn(I, 4), y(O), yb(O);
    K::linear<double>::forward(y.data(), x.data(), merged.data(), nullptr, 1, I, O, layout);
    K::linear<double>::forward(yb.data(), x.data(), W.data(), nullptr, 1, I, O, layout);
    for (int64_t o = 0; o < s.out_n; o++) {
      double ax = 0;
      for (int64_t r = 0; r < R; r++) {
        double h = 0;
        for (int64_t i = 0; i < I; i++) h += A[r * I + i] * x[i];
        ax += B[o * R + r] * h;
      }
      yb[s.out0 + o] += s.scale * ax;
    }
    expect_close(y, yb, 1e-12, 1e-13, "lora merge as a map");
  }
}

TEST(Ops, DeltaSparse) {
  const int64_t I = 7, O = 11, N = 4, n = I * O, nnz = 20;
  std::vector<int32_t> pos(nnz);
  for (int64_t j = 0; j < nnz; j++) pos[j] = int32_t(j * 3 + j % 2);
  auto base = randn(n, 1), v = randn(nnz, 2), R = randn(n, 3), x = randn(N * I, 4);
  std::vector<double> W(n), Wr(n), dv(nnz, 0.0), dvr(nnz, 0.0);
  K::delta_sparse<double>::forward(W.data(), base.data(), pos.data(), v.data(), n, nnz);
  ref::delta_sparse<double>::forward(Wr.data(), base.data(), pos.data(), v.data(), n, nnz);
  EXPECT_EQ(W, Wr);
  K::delta_sparse<double>::backward(dv.data(), R.data(), pos.data(), nnz);
  ref::delta_sparse<double>::backward(dvr.data(), R.data(), pos.data(), nnz);
  EXPECT_EQ(dv, dvr);
  expect_fd(
      v, dv,
      [&] {
        K::delta_sparse<double>::forward(W.data(), base.data(), pos.data(), v.data(), n, nnz);
        return dot(W, R);
      },
      "delta sparse dv");
  // the direct path: x (base + delta) = x base + the sparse add
  std::vector<double> direct(N * O), rebuilt(N * O), want(N * O, 0.0);
  K::linear<double>::forward(direct.data(), x.data(), base.data(), nullptr, N, I, O,
                             K::WLayout::InOut);
  const int64_t keep = parallel_min_work;
  parallel_min_work = 0;
  K::delta_sparse<double>::add(direct.data(), x.data(), pos.data(), v.data(), N, I, O, nnz);
  parallel_min_work = keep;
  ref::delta_sparse<double>::add(want.data(), x.data(), pos.data(), v.data(), N, I, O, nnz);
  K::delta_sparse<double>::forward(W.data(), base.data(), pos.data(), v.data(), n, nnz);
  K::linear<double>::forward(rebuilt.data(), x.data(), W.data(), nullptr, N, I, O,
                             K::WLayout::InOut);
  expect_close(direct, rebuilt, 1e-12, 1e-13, "delta sparse add vs rebuild");
  std::vector<double> only(N * O, 0.0);
  K::delta_sparse<double>::add(only.data(), x.data(), pos.data(), v.data(), N, I, O, nnz);
  expect_close(only, want, 1e-13, 1e-14, "delta sparse add vs reference");
}

TEST(Ops, DeltaQuant) {
  const int64_t I = 6, O = 9, n = I * O;
  const auto delta = randn(n, 1, 0.2), base = randn(n, 2);
  std::vector<double> s(O);
  for (int64_t o = 0; o < O; o++) s[o] = 0.05 * double(1 + o % 3);
  s[4] = 0;  // a column of zeros: codes 0
  for (int64_t bits : {1, 2, 4, 8}) {
    std::vector<int8_t> c(n), cr(n);
    K::delta_quant<double>::encode(c.data(), delta.data(), s.data(), I, O, bits);
    ref::delta_quant<double>::encode(cr.data(), delta.data(), s.data(), I, O, bits);
    EXPECT_EQ(c, cr) << bits << " bits";
    std::vector<double> W(n), Wr(n);
    K::delta_quant<double>::forward(W.data(), base.data(), c.data(), s.data(), I, O);
    ref::delta_quant<double>::forward(Wr.data(), base.data(), c.data(), s.data(), I, O);
    expect_close(W, Wr, 1e-15, 1e-15, "delta quant rebuild");
    if (bits >= 2)
      for (int64_t i = 0; i < n; i++)
        if (s[i % O] > 0 && std::abs(delta[i]) < s[i % O] * ((1 << (bits - 1)) - 1))
          EXPECT_LE(std::abs(W[i] - base[i] - delta[i]), s[i % O] / 2 + 1e-15);
  }
}
