// Two backends, one seam: every op of the table (backend/device.hpp) runs on the CPU device and
// on the reference device (backend/reference.cpp: plain scalar loops) with the same random
// inputs, at a small and at a model's size, in float and in double, and the outputs agree within
// the tolerances stated per op. Then one whole training step (forward, backward, clipping,
// AdamW) of a dense model and of an MoE model with LoRA, MoE-CT and DeRS parts runs on both
// devices: the losses, the gradients and the updated weights agree. The list of cases names
// every entry of the table: an op added to Ops<T> without a case here fails.
#include <gtest/gtest.h>

#include <set>

#include "backend/device.hpp"
#include "model/model.hpp"
#include "test_util.hpp"
#include "tiny_config.hpp"
#include "train/adamw.hpp"

using namespace moelab;
using namespace moelab::test;
namespace K = moelab::kernels;

namespace {

using Outputs = std::vector<std::vector<double>>;  // each output of an op, as doubles

template <typename T>
std::vector<T> rnd(int64_t n, uint64_t seed, double scale = 1.0) {
  return cast<T>(randn(n, seed, scale));
}

template <typename T>
std::vector<double> d(const std::vector<T>& v) {
  return cast<double>(v);
}

// ----------------------------------------------------------------------------
// one runner per op family: its outputs on a table, at the small (real = false) or model size

template <typename T>
Outputs run_embedding(const Ops<T>& op, bool real) {
  const int64_t V = real ? 2048 : 11, d_ = real ? 512 : 8, N = real ? 128 : 30;
  std::vector<int32_t> tok(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; n++) tok[size_t(n)] = int32_t((n * 7) % V);
  const auto W = rnd<T>(V * d_, 1), R = rnd<T>(N * d_, 2);
  std::vector<T> out(static_cast<size_t>(N * d_)), dW(static_cast<size_t>(V * d_), T(0));
  op.embedding_forward(out.data(), tok.data(), W.data(), N, d_);
  op.embedding_backward(dW.data(), R.data(), tok.data(), N, d_);
  return {d(out), d(dW)};
}

template <typename T>
Outputs run_rmsnorm(const Ops<T>& op, bool real) {
  const int64_t N = real ? 128 : 7, d_ = real ? 512 : 16;
  auto x = rnd<T>(N * d_, 1), g = rnd<T>(d_, 2, 0.3), R = rnd<T>(N * d_, 3);
  for (T& v : g) v += T(1);
  std::vector<T> out(static_cast<size_t>(N * d_)), rstd(static_cast<size_t>(N)),
      dx(static_cast<size_t>(N * d_), T(0)), dg(static_cast<size_t>(d_), T(0));
  op.rmsnorm_forward(out.data(), rstd.data(), x.data(), g.data(), N, d_, 1e-5);
  op.rmsnorm_backward(dx.data(), dg.data(), R.data(), x.data(), g.data(), rstd.data(), N, d_);
  return {d(out), d(rstd), d(dx), d(dg)};
}

template <typename T>
Outputs run_linear(const Ops<T>& op, bool real) {
  const int64_t N = real ? 128 : 9, I = real ? 2048 : 23, O = real ? 512 : 17;
  Outputs o;
  for (const K::WLayout layout : {K::WLayout::OutIn, K::WLayout::InOut}) {
    const auto x = rnd<T>(N * I, 1), W = rnd<T>(O * I, 2, 1.0 / std::sqrt(double(I)));
    const auto b = rnd<T>(O, 3), R = rnd<T>(N * O, 4);
    std::vector<T> out(static_cast<size_t>(N * O)), dx(static_cast<size_t>(N * I)),
        dW(static_cast<size_t>(O * I), T(0)), db(static_cast<size_t>(O), T(0));
    op.linear_forward(out.data(), x.data(), W.data(), b.data(), N, I, O, layout, Precision::F32);
    op.linear_backward(dx.data(), dW.data(), db.data(), R.data(), x.data(), W.data(), N, I, O,
                       layout, false, Precision::F32);
    for (auto* v : {&out, &dx, &dW, &db}) o.push_back(d(*v));
  }
  return o;
}

// Experts of uneven rows, one of them empty; at the model size the rows split evenly enough over
// two threads for the CPU kernel to run the experts side by side.
template <typename T>
Outputs run_linear_grouped(const Ops<T>& op, bool real) {
  const std::vector<int64_t> offsets =
      real ? std::vector<int64_t>{0, 160, 280, 280, 420, 552} : std::vector<int64_t>{0, 5, 5, 9};
  const int64_t E = int64_t(offsets.size()) - 1, R = offsets.back();
  const int64_t I = real ? 256 : 7, O = real ? 512 : 6;
  Outputs o;
  for (const K::WLayout layout : {K::WLayout::OutIn, K::WLayout::InOut}) {
    const auto x = rnd<T>(R * I, 1), W = rnd<T>(E * O * I, 2, 1.0 / std::sqrt(double(I)));
    const auto b = rnd<T>(E * O, 3), G = rnd<T>(R * O, 4);
    std::vector<T> out(static_cast<size_t>(R * O)), dx = rnd<T>(R * I, 5),
                                                    dW(static_cast<size_t>(E * O * I), T(0)),
                                                    db(static_cast<size_t>(E * O), T(0));
    op.linear_grouped_forward(out.data(), x.data(), W.data(), b.data(), offsets.data(), E, I, O,
                              layout, Precision::F32);
    op.linear_grouped_backward(dx.data(), dW.data(), db.data(), G.data(), x.data(), W.data(),
                               offsets.data(), E, I, O, layout, true, Precision::F32);
    for (auto* v : {&out, &dx, &dW, &db}) o.push_back(d(*v));
  }
  return o;
}

// Also one row (M = 1): decoding's products, which take the matrix-vector path.
template <typename T>
Outputs run_gemm(const Ops<T>& op, bool real) {
  const int64_t N = real ? 512 : 5, Kd = real ? 256 : 9;
  Outputs o;
  for (const int64_t M : {real ? int64_t(128) : int64_t(7), int64_t(1)})
    for (const Trans ta : {Trans::N, Trans::T})
      for (const Trans tb : {Trans::N, Trans::T})
        for (const T beta : {T(0), T(1)}) {
          const auto A = rnd<T>(M * Kd, 1), B = rnd<T>(Kd * N, 2, 1.0 / std::sqrt(double(Kd)));
          auto C = rnd<T>(M * N, 3);
          op.gemm(Precision::F32, ta, tb, M, N, Kd, A.data(), ta == Trans::N ? Kd : M, B.data(),
                  tb == Trans::N ? N : Kd, beta, C.data(), N);
          o.push_back(d(C));
        }
  return o;
}

template <typename T>
Outputs run_rope(const Ops<T>& op, bool real) {
  const int64_t N = real ? 128 : 12, seq = real ? 64 : 6, nh = real ? 8 : 3, hd = real ? 64 : 8;
  const int64_t stride = nh * hd + 6;
  std::vector<T> c(static_cast<size_t>(seq * hd / 2)), s(static_cast<size_t>(seq * hd / 2));
  op.rope_tables(c.data(), s.data(), seq, hd, K::RopeParams{10000.0, 4.0, 32, 1, 16});
  auto x = rnd<T>(N * stride, 1), g = rnd<T>(N * stride, 2);
  op.rope_forward(x.data(), N, seq, nh, hd, stride, c.data(), s.data());
  op.rope_backward(g.data(), N, seq, nh, hd, stride, c.data(), s.data());
  return {d(c), d(s), d(x), d(g)};
}

template <typename T>
Outputs run_attention(const Ops<T>& op, bool real) {
  const K::AttnShape s{real ? 2 : 1,
                       real ? 64 : 9,
                       real ? 4 : 2,
                       real ? 2 : 1,
                       real ? 32 : 4,
                       real ? 24 : 0,
                       1.0 / std::sqrt(real ? 32.0 : 4.0)};
  const int64_t C = (s.H + 2 * s.KV) * s.hd, N = s.B * s.T, OC = s.H * s.hd;
  const auto qkv = rnd<T>(N * C, 1), sinks = rnd<T>(s.H, 2), R = rnd<T>(N * OC, 3);
  std::vector<T> out(static_cast<size_t>(N * OC)), lse(static_cast<size_t>(N * s.H)),
      dq(static_cast<size_t>(N * C)), ds(static_cast<size_t>(s.H), T(0));
  op.attention_forward(out.data(), lse.data(), qkv.data(), sinks.data(), s);
  op.attention_backward(dq.data(), ds.data(), R.data(), qkv.data(), sinks.data(), out.data(),
                        lse.data(), s);
  // the decoder's step: each sequence at its own position, in another cache slot
  const int64_t L = s.T + 2;
  const auto Kc = rnd<T>(s.B * s.KV * s.hd * L, 4), Vc = rnd<T>(s.B * L * s.KV * s.hd, 5);
  std::vector<int64_t> pos(static_cast<size_t>(s.B)), slot(static_cast<size_t>(s.B));
  for (int64_t b = 0; b < s.B; b++)
    pos[size_t(b)] = (s.T - 1) * (b + 1) / s.B, slot[size_t(b)] = s.B - 1 - b;
  std::vector<T> dec(static_cast<size_t>(s.B * OC));
  op.attention_decode(dec.data(), qkv.data(), Kc.data(), Vc.data(), L, sinks.data(), pos.data(),
                      slot.data(), s);
  return {d(out), d(lse), d(dq), d(ds), d(dec)};
}

template <typename T>
Outputs run_swiglu(const Ops<T>& op, bool real) {
  const int64_t N = real ? 128 : 6, I = real ? 512 : 10;
  const auto h = rnd<T>(N * 2 * I, 1, 3.0), R = rnd<T>(N * I, 2);
  std::vector<T> out(static_cast<size_t>(N * I)), dh(static_cast<size_t>(N * 2 * I));
  op.swiglu_forward(out.data(), h.data(), N, I, 2.0, 1.702);
  op.swiglu_backward(dh.data(), R.data(), h.data(), N, I, 2.0, 1.702);
  return {d(out), d(dh)};
}

template <typename T>
Outputs run_router(const Ops<T>& op, bool real) {
  const int64_t N = real ? 128 : 13, E = real ? 8 : 4, k = 2;
  const auto z = rnd<T>(N * E, 1, 2.0), bias = rnd<T>(E, 2, 0.1), R = rnd<T>(N * k, 3);
  std::vector<int32_t> idx(static_cast<size_t>(N * k));
  std::vector<T> w(static_cast<size_t>(N * k)), dz(static_cast<size_t>(N * E)),
      dzl(static_cast<size_t>(N * E), T(0));
  op.router_forward(idx.data(), w.data(), z.data(), bias.data(), N, E, k);
  op.router_backward(dz.data(), R.data(), w.data(), idx.data(), N, E, k);
  const K::RouterLosses l = op.router_loss_forward(z.data(), idx.data(), N, E, k, 0.03, 0.002);
  op.router_loss_backward(dzl.data(), z.data(), idx.data(), N, E, k, 0.03, 0.002, 0.5);
  return {d(idx), d(w), d(dz), {l.aux, l.z, l.aux_raw, l.z_raw}, d(dzl)};
}

template <typename T>
Outputs run_moe(const Ops<T>& op, bool real) {
  const int64_t N = real ? 128 : 9, E = real ? 8 : 4, k = 2, d_ = real ? 256 : 5;
  std::vector<int32_t> idx(static_cast<size_t>(N * k)), order(static_cast<size_t>(N * k)),
      pos(static_cast<size_t>(N * k));
  for (int64_t n = 0; n < N; n++) {
    idx[size_t(n * k)] = int32_t((n * 3) % E);
    idx[size_t(n * k + 1)] = int32_t((n * 3 + 1 + n % 2) % E);
  }
  std::vector<int64_t> off(static_cast<size_t>(E + 1));
  op.moe_sort(order.data(), pos.data(), off.data(), idx.data(), N, E, k);
  const K::MoeRouting r{N, E, k, order.data(), pos.data(), off.data()};
  const auto x = rnd<T>(N * d_, 1), y = rnd<T>(N * k * d_, 2), w = rnd<T>(N * k, 3);
  const auto R = rnd<T>(N * d_, 4), Rx = rnd<T>(N * k * d_, 5);
  std::vector<T> xe(static_cast<size_t>(N * k * d_)), dx(static_cast<size_t>(N * d_), T(0)),
      out(static_cast<size_t>(N * d_));
  std::vector<T> dy(static_cast<size_t>(N * k * d_)), dw(static_cast<size_t>(N * k));
  op.moe_gather_forward(xe.data(), x.data(), r, d_);
  op.moe_gather_backward(dx.data(), Rx.data(), r, d_);
  op.moe_combine_forward(out.data(), y.data(), w.data(), r, d_);
  op.moe_combine_backward(dy.data(), dw.data(), R.data(), y.data(), w.data(), r, d_);
  return {d(order), d(pos), d(off), d(xe), d(dx), d(out), d(dy), d(dw)};
}

template <typename T>
Outputs run_softmax(const Ops<T>& op, bool real) {
  const int64_t N = real ? 128 : 8, V = real ? 2048 : 50;
  const auto z = rnd<T>(N * V, 1, 3.0);
  std::vector<int32_t> t(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; n++) t[size_t(n)] = n % 5 == 3 ? -1 : int32_t((n * 13) % V);
  std::vector<T> lse(static_cast<size_t>(N)), g(static_cast<size_t>(N * V)),
      mx(static_cast<size_t>(N));
  const double loss = op.cross_entropy_forward(lse.data(), z.data(), t.data(), N, V);
  op.cross_entropy_backward(g.data(), z.data(), lse.data(), t.data(), N, V, 1.0 / double(N));
  std::vector<double> sum(static_cast<size_t>(N)), sum_d(static_cast<size_t>(N));
  op.logsumexp(mx.data(), sum.data(), z.data(), N, V, false);
  op.logsumexp(mx.data(), sum_d.data(), z.data(), N, V, true);
  std::vector<int32_t> top(static_cast<size_t>(N));
  op.argmax(top.data(), z.data(), N, V - 3, V);  // among the first V - 3 ids of each row
  return {{loss}, d(lse), d(g), d(mx), sum, sum_d, d(top)};
}

template <typename T>
Outputs run_elementwise(const Ops<T>& op, bool real) {
  const int64_t N = real ? 128 : 7, d_ = real ? 512 : 5, n = N * d_;
  const auto a = rnd<T>(n, 1), b = rnd<T>(n, 2), F = rnd<T>(n, 3), M = rnd<T>(n, 4);
  const auto gate = rnd<T>(N, 5, 0.5), R = rnd<T>(n, 6);
  std::vector<T> sum(static_cast<size_t>(n)), out(static_cast<size_t>(n)),
      dF(static_cast<size_t>(n)), dM(static_cast<size_t>(n)), da(static_cast<size_t>(N));
  op.add(sum.data(), a.data(), b.data(), n);
  op.fusion_forward(out.data(), F.data(), M.data(), gate.data(), 1, N, d_);
  op.fusion_backward(dF.data(), dM.data(), da.data(), R.data(), F.data(), M.data(), gate.data(), 1,
                     N, d_);
  std::vector<T> y(static_cast<size_t>(n)), dz(static_cast<size_t>(n));
  op.sigmoid_forward(y.data(), a.data(), n);
  op.sigmoid_backward(dz.data(), R.data(), y.data(), n);
  return {d(sum), d(out), d(dF), d(dM), d(da), d(y), d(dz)};
}

template <typename T>
Outputs run_vec(const Ops<T>& op, bool real) {
  const int64_t n = real ? (int64_t(1) << 18) + 5 : 37, rows = real ? 128 : 5, cols = real ? 8 : 3;
  const auto x = rnd<T>(n, 1);
  const double ss = op.sumsq(x.data(), n, 2.5), s = op.sum(x.data(), n);
  auto y = x;
  op.scale(y.data(), T(0.5), 1, n, n);
  auto z = rnd<T>(rows * (cols + 2), 2);
  op.scale(z.data(), T(-3), rows, cols, cols + 2);
  std::vector<T> f(static_cast<size_t>(n)), g(static_cast<size_t>(n));
  op.fill(f.data(), T(0.25), n);
  op.fill_normal(g.data(), n, 0.02, 11, 4);
  const int64_t V = 4;
  std::vector<std::vector<T>> vs;
  std::vector<const T*> ptr;
  for (int64_t v = 0; v < V; v++) vs.push_back(rnd<T>(n, uint64_t(20 + v)));
  for (const auto& v : vs) ptr.push_back(v.data());
  std::vector<double> G(static_cast<size_t>(V * V));
  op.gram(G.data(), ptr.data(), V, n);
  return {{ss, s}, d(y), d(z), d(f), d(g), G};
}

// Rows gathered in a scrambled order, written as rows (step 1) and as columns of a transposed
// store (step = its row count, the KV cache's keys); untouched elements stay as they were.
template <typename T>
Outputs run_rows_copy(const Ops<T>& op, bool real) {
  const int64_t rows = real ? 512 : 9, cols = real ? 256 : 5, m = real ? 300 : 6;
  const auto x = rnd<T>(rows * (cols + 3), 1);  // [rows, cols + 3]: rows of src with a gap
  std::vector<int64_t> src_at(static_cast<size_t>(m)), row_at(static_cast<size_t>(m)),
      col_at(static_cast<size_t>(m));  // [m] each
  for (int64_t r = 0; r < m; r++) {
    src_at[size_t(r)] = ((r * 7 + 2) % rows) * (cols + 3) + 1;
    row_at[size_t(r)] = (m - 1 - r) * cols;  // rows in reverse order
    col_at[size_t(r)] = r;                   // column r of a [cols, m] store
  }
  auto as_rows = rnd<T>(m * cols, 2), as_cols = rnd<T>(cols * m + 4, 3);
  op.rows_copy(as_rows.data(), row_at.data(), 1, x.data(), src_at.data(), m, cols);
  op.rows_copy(as_cols.data(), col_at.data(), m, x.data(), src_at.data(), m, cols);
  for (int64_t r = 0; r < m; r++)  // exact: a copy
    for (int64_t c = 0; c < cols; c++) {
      EXPECT_EQ(as_rows[size_t((m - 1 - r) * cols + c)], x[size_t(src_at[size_t(r)] + c)]);
      EXPECT_EQ(as_cols[size_t(c * m + r)], x[size_t(src_at[size_t(r)] + c)]);
    }
  return {d(as_rows), d(as_cols)};
}

template <typename T>
Outputs run_adamw(const Ops<T>& op, bool real) {
  const int64_t n = real ? (int64_t(1) << 17) : 40;
  auto p = rnd<T>(2 * n, 1), m = rnd<T>(n + n / 2, 2, 0.01), v = rnd<T>(n + n / 2, 3, 0.01);
  for (T& x : v) x = x * x;
  const auto g = rnd<T>(2 * n, 4);
  // three spans with a frozen gap between the second and the third
  const std::vector<K::AdamWSpan> spans{
      {0, 0, n / 2, true}, {n / 2, n / 2, n / 2, false}, {3 * n / 2, n, n / 2, true}};
  const K::AdamWStep k{0.9, 0.95,          1e-8, 1e-3 / (1 - 0.9 * 0.9), std::sqrt(1 - 0.95 * 0.95),
                       0.7, 1 - 1e-3 * 0.1};
  op.adamw_update(p.data(), g.data(), m.data(), v.data(), spans.data(), 3, k);
  return {d(p), d(m), d(v)};
}

template <typename T>
Outputs run_lora(const Ops<T>& op, bool real) {
  const int64_t I = real ? 512 : 8, O = real ? 768 : 12, R = real ? 8 : 2;
  Outputs o;
  for (const K::WLayout layout : {K::WLayout::OutIn, K::WLayout::InOut}) {
    const K::LowRank s{I, O, R, O / 3, O / 2, 1.5, layout};
    const auto A = rnd<T>(R * I, 1), B = rnd<T>(s.out_n * R, 2);
    auto W = rnd<T>(I * O, 3), W2 = W;
    op.lora_merge(W.data(), A.data(), B.data(), s);
    op.lora_expand(W2.data(), A.data(), B.data(), s);
    o.push_back(d(W));
    o.push_back(d(W2));
  }
  return o;
}

template <typename T>
Outputs run_delta(const Ops<T>& op, bool real) {
  const int64_t I = real ? 512 : 6, O = real ? 256 : 10, N = real ? 128 : 3, n = I * O;
  const int64_t nnz = n / 10;
  std::vector<int32_t> pos(static_cast<size_t>(nnz));
  for (int64_t j = 0; j < nnz; j++) pos[size_t(j)] = int32_t(j * 10 + j % 7);  // sorted
  const auto base = rnd<T>(n, 1), v = rnd<T>(nnz, 2), x = rnd<T>(N * I, 3), dW = rnd<T>(n, 4);
  std::vector<T> W(static_cast<size_t>(n)), dv(static_cast<size_t>(nnz), T(0)),
      out = rnd<T>(N * O, 5), Wq(static_cast<size_t>(n));
  op.delta_sparse_forward(W.data(), base.data(), pos.data(), v.data(), n, nnz);
  op.delta_sparse_backward(dv.data(), dW.data(), pos.data(), nnz);
  op.delta_sparse_add(out.data(), x.data(), pos.data(), v.data(), N, I, O, nnz);
  const auto delta = rnd<T>(n, 6, 0.1);
  std::vector<T> s(static_cast<size_t>(O));
  for (int64_t o = 0; o < O; o++) s[size_t(o)] = T(0.3 / 3 * (1 + o % 3));
  Outputs res{d(W), d(dv), d(out)};
  for (int64_t bits : {1, 3, 8}) {
    std::vector<int8_t> codes(static_cast<size_t>(n));
    op.delta_quant_encode(codes.data(), delta.data(), s.data(), I, O, bits);
    op.delta_quant_forward(Wq.data(), base.data(), codes.data(), s.data(), I, O);
    res.push_back(d(codes));
    res.push_back(d(Wq));
  }
  return res;
}

// ----------------------------------------------------------------------------
// the cases, and which entries of the table each one runs

template <typename M>
size_t entry(M Ops<float>::*member) {
  static const Ops<float> probe{};
  return size_t(reinterpret_cast<const char*>(&(probe.*member)) -
                reinterpret_cast<const char*>(&probe)) /
         sizeof(void*);
}

struct OpCase {
  std::string name;
  std::vector<size_t> entries;
  Outputs (*f32)(const Ops<float>&, bool);
  Outputs (*f64)(const Ops<double>&, bool);
  double rtol32, atol32;  // float: the CPU kernels sum in float, the reference in double
};

#define MOELAB_CASE(fn, rtol, atol, ...)                         \
  OpCase {                                                       \
#fn, {__VA_ARGS__ }, &fn < float>, &fn < double>, rtol, atol \
  }

std::vector<OpCase> op_cases() {
  using O = Ops<float>;
  return {
      MOELAB_CASE(run_embedding, 1e-6, 1e-6, entry(&O::embedding_forward),
                  entry(&O::embedding_backward)),
      MOELAB_CASE(run_rmsnorm, 1e-4, 1e-5, entry(&O::rmsnorm_forward), entry(&O::rmsnorm_backward)),
      MOELAB_CASE(run_linear, 1e-4, 2e-4, entry(&O::linear_forward), entry(&O::linear_backward)),
      MOELAB_CASE(run_linear_grouped, 1e-4, 2e-4, entry(&O::linear_grouped_forward),
                  entry(&O::linear_grouped_backward)),
      MOELAB_CASE(run_gemm, 1e-4, 2e-4, entry(&O::gemm)),
      MOELAB_CASE(run_rope, 1e-5, 1e-6, entry(&O::rope_tables), entry(&O::rope_forward),
                  entry(&O::rope_backward)),
      MOELAB_CASE(run_attention, 1e-4, 1e-5, entry(&O::attention_forward),
                  entry(&O::attention_backward), entry(&O::attention_decode)),
      MOELAB_CASE(run_swiglu, 1e-5, 1e-6, entry(&O::swiglu_forward), entry(&O::swiglu_backward)),
      MOELAB_CASE(run_router, 1e-5, 1e-6, entry(&O::router_forward), entry(&O::router_backward),
                  entry(&O::router_loss_forward), entry(&O::router_loss_backward)),
      MOELAB_CASE(run_moe, 1e-4, 1e-5, entry(&O::moe_sort), entry(&O::moe_gather_forward),
                  entry(&O::moe_gather_backward), entry(&O::moe_combine_forward),
                  entry(&O::moe_combine_backward)),
      MOELAB_CASE(run_softmax, 1e-5, 1e-6, entry(&O::cross_entropy_forward),
                  entry(&O::cross_entropy_backward), entry(&O::logsumexp), entry(&O::argmax)),
      MOELAB_CASE(run_elementwise, 1e-4, 1e-5, entry(&O::add), entry(&O::fusion_forward),
                  entry(&O::fusion_backward), entry(&O::sigmoid_forward),
                  entry(&O::sigmoid_backward)),
      MOELAB_CASE(run_vec, 1e-5, 1e-6, entry(&O::sumsq), entry(&O::sum), entry(&O::scale),
                  entry(&O::fill), entry(&O::fill_normal), entry(&O::gram)),
      MOELAB_CASE(run_rows_copy, 1e-12, 1e-12, entry(&O::rows_copy)),
      MOELAB_CASE(run_adamw, 1e-5, 1e-6, entry(&O::adamw_update)),
      MOELAB_CASE(run_lora, 1e-5, 1e-5, entry(&O::lora_merge), entry(&O::lora_expand)),
      MOELAB_CASE(run_delta, 1e-6, 1e-6, entry(&O::delta_sparse_forward),
                  entry(&O::delta_sparse_backward), entry(&O::delta_sparse_add),
                  entry(&O::delta_quant_forward), entry(&O::delta_quant_encode)),
  };
}

void expect_outputs_close(const Outputs& a, const Outputs& b, double rtol, double atol,
                          const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); i++)
    expect_close(a[i], b[i], rtol, atol, what + ", output " + std::to_string(i));
}

}  // namespace

TEST(BackendOps, EveryEntryOfTheTableHasACase) {
  std::set<size_t> seen;
  for (const OpCase& c : op_cases())
    for (size_t e : c.entries) EXPECT_TRUE(seen.insert(e).second) << c.name << " entry " << e;
  EXPECT_EQ(seen.size(), kOpCount) << "an op of Ops<T> has no cross-backend case";
  EXPECT_TRUE(ops_complete(device_find("cpu").ops<float>()));
  EXPECT_TRUE(ops_complete(device_find("cpu").ops<double>()));
  EXPECT_TRUE(ops_complete(device_find("reference").ops<float>()));
  EXPECT_TRUE(ops_complete(device_find("reference").ops<double>()));
  EXPECT_EQ(device_find("reference").name(), "reference");
}

// Double: both sum in double where it matters, so they agree to 1e-9 relative; float: the
// tolerances of each case.
TEST(BackendOps, EveryOpAgreesOnBothBackendsAtSmallAndModelSizes) {
  const Device &cpu = device_find("cpu"), &ref = device_find("reference");
  for (const OpCase& c : op_cases())
    for (const bool real : {false, true}) {
      const std::string what = c.name + (real ? " (model size)" : " (small)");
      expect_outputs_close(c.f64(cpu.ops<double>(), real), c.f64(ref.ops<double>(), real), 1e-9,
                           1e-11, what + ", double");
      expect_outputs_close(c.f32(cpu.ops<float>(), real), c.f32(ref.ops<float>(), real), c.rtol32,
                           c.atol32, what + ", float");
    }
}

// ----------------------------------------------------------------------------
// one training step on each device

namespace {

template <typename T>
struct Step {
  double loss = 0, norm = 0;
  std::vector<T> grads, params;
};

template <typename T>
Step<T> train_step(const ModelConfig& c, Device& dev) {
  const int64_t B = 2, S = 12;
  Model<T> m(c, B, S, dev);
  m.init_weights(5);
  std::vector<int32_t> tokens(static_cast<size_t>(B * S)), targets(static_cast<size_t>(B * S));
  for (int64_t i = 0; i < B * S; i++) {
    tokens[size_t(i)] = int32_t((i * 7 + 3) % c.vocab_size);
    targets[size_t(i)] = i % 9 == 4 ? -1 : int32_t((i * 5 + 1) % c.vocab_size);
  }
  m.zero_grad();
  Step<T> s;
  s.loss = m.forward(tokens, targets).total();
  m.backward();
  s.norm = grad_clip_global_norm<T>(m.layout, m.grads, 0.5, dev.ops<T>());
  s.grads = m.grads;
  AdamW<T> opt(m.layout, AdamWConfig{}, dev);
  opt.update(m.params, m.grads, 1e-2);
  s.params = m.params;
  return s;
}

ModelConfig moe_with_every_part() {
  ModelConfig c = tiny(true);
  c.lora.rank = 2;
  c.lora.alpha = 4;
  c.lora.targets = {"q_proj", "o_proj"};
  c.moe_ct.experts = 3;
  c.moe_ct.top_k = 2;
  c.moe_ct.gate = CtGate::Token;
  c.moe_ct.lambda = 0.3;
  c.moe_ct.copy = false;  // new experts of their own: the gate's gradient is not zero
  c.moe_ct.layers = {1};
  c.ders.delta = DeltaKind::Sparse;
  c.ders.p = 0.8;
  c.ders.seed = 3;
  return c;
}

template <typename T>
void expect_same_step(const ModelConfig& c, double rtol, double atol, const std::string& what) {
  const Step<T> a = train_step<T>(c, device_find("cpu")),
                b = train_step<T>(c, device_find("reference"));
  EXPECT_NEAR(a.loss, b.loss, rtol * std::abs(b.loss)) << what << " loss";
  EXPECT_NEAR(a.norm, b.norm, rtol * std::abs(b.norm)) << what << " gradient norm";
  expect_close(a.grads, b.grads, rtol, atol, what + " gradients");
  expect_close(a.params, b.params, rtol, atol, what + " updated weights");
}

}  // namespace

// Double: 1e-9 relative (sums in other orders); float: 1e-3 relative, 1e-5 absolute on gradients
// and weights (float sums against double ones over a step; an AdamW step moves a weight by about
// lr = 1e-2 whatever its gradient, so a gradient's rounding moves the weight far less).
TEST(BackendOps, ATrainingStepAgreesOnBothBackends) {
  expect_same_step<double>(tiny(false), 1e-9, 1e-12, "dense, double");
  expect_same_step<float>(tiny(false), 1e-3, 1e-5, "dense, float");
  const ModelConfig moe = moe_with_every_part();
  expect_same_step<double>(moe, 1e-9, 1e-12, "MoE with LoRA, MoE-CT and DeRS, double");
  expect_same_step<float>(moe, 1e-3, 1e-5, "MoE with LoRA, MoE-CT and DeRS, float");
  ModelConfig quant = moe;
  quant.ders.delta = DeltaKind::Quant;
  quant.ders.bits = 3;
  expect_same_step<double>(quant, 1e-9, 1e-12, "MoE with quantized DeRS deltas, double");
}
