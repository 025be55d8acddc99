// Google Benchmark micro-benchmarks of the kernels, at the shapes of bench/dense.json and
// bench/moe.json (N = 8 x 256 tokens, d 256, 4 heads of 64, FFN 1024, vocab 8192).
// GEMMs run through both libraries so the choice of backend stays a measurement:
//   build/bench/moelab_kernels_bench --benchmark_filter=Gemm
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <dnnl.h>

#include <vector>

#include "core/rng.hpp"
#include "kernels/kernels.hpp"

using namespace moelab;
using namespace moelab::kernels;

namespace {

std::vector<float> randv(int64_t n, uint64_t seed, float scale = 1.f) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; i++) v[size_t(i)] = float(scale * rng_normal(seed, 0, uint64_t(i)));
  return v;
}

constexpr int64_t kN = 2048, kD = 256, kH = 4, kHd = 64, kI = 1024, kV = 8192;

// ---------------------------------------------------------------------------- GEMM
// args: M, N, K, transA, transB, backend (0 = oneDNN, 1 = OpenBLAS)
void Gemm(benchmark::State& st) {
  const int M = int(st.range(0)), N = int(st.range(1)), K = int(st.range(2));
  const bool ta = st.range(3), tb = st.range(4);
  auto A = randv(int64_t(M) * K, 1), B = randv(int64_t(K) * N, 2);
  std::vector<float> C(size_t(M) * N);
  const int lda = ta ? M : K, ldb = tb ? K : N;
  for (auto _ : st) {
    if (st.range(5) == 0)
      dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, 1.f, A.data(), lda, B.data(), ldb, 0.f,
                 C.data(), N);
    else
      cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M,
                  N, K, 1.f, A.data(), lda, B.data(), ldb, 0.f, C.data(), N);
    benchmark::ClobberMemory();
  }
  st.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * M * N * K, benchmark::Counter::kIsIterationInvariantRate,
                         benchmark::Counter::kIs1000);
}
void gemm_shapes(benchmark::internal::Benchmark* b) {
  const std::vector<std::vector<int64_t>> shapes = {
      {kN, 2 * kI, kD, 0, 0},  // gate_up forward (x W1)
      {kN, kD, kI, 0, 0},      // down forward
      {kN, kD, 2 * kI, 0, 1},  // gate_up dx (dh W1^T)
      {kD, 2 * kI, kN, 1, 0},  // gate_up dW (x^T dh)
      {kN, kV, kD, 0, 1},      // lm head forward
      {kV, kD, kN, 1, 0},      // lm head dW
      {kN, 3 * kD, kD, 0, 1},  // qkv forward
      // evaluation of the demo model (d 128, FFN 1024, vocab 8192): the head over 2,048
      // teacher-forced rows, the head and the FFN up-projection of one decoding step of 128 rows
      {2048, 8192, 128, 0, 1},
      {128, 8192, 128, 0, 1},
      {128, 2048, 128, 0, 0},
  };
  for (const auto& s : shapes)
    for (int64_t backend : {0, 1}) {
      auto a = s;
      a.push_back(backend);
      b->Args(a);
    }
  b->ArgNames({"M", "N", "K", "tA", "tB", "openblas"});
}
BENCHMARK(Gemm)->Apply(gemm_shapes)->UseRealTime();

// ---------------------------------------------------------------------------- attention
void Attention(benchmark::State& st) {
  const AttnShape s{8, 256, kH, kH, kHd, st.range(0), 0.125};
  const bool backward = st.range(1);
  const int64_t C = 3 * kH * kHd, N = s.B * s.T;
  auto qkv = randv(N * C, 1), sinks = randv(kH, 2), dout = randv(N * kH * kHd, 3);
  std::vector<float> out(N * kH * kHd), lse(N * kH), dqkv(N * C), dsinks(kH);
  attention<float>::forward(out.data(), lse.data(), qkv.data(), sinks.data(), s);
  for (auto _ : st) {
    if (backward)
      attention<float>::backward(dqkv.data(), dsinks.data(), dout.data(), qkv.data(), sinks.data(),
                                 out.data(), lse.data(), s);
    else
      attention<float>::forward(out.data(), lse.data(), qkv.data(), sinks.data(), s);
  }
  double keys = 0;  // average keys per query
  for (int64_t i = 0; i < s.T; i++) keys += double(s.window ? std::min(i + 1, s.window) : i + 1);
  const double flops = 4.0 * N * kH * kHd * keys / double(s.T) * (backward ? 2.5 : 1.0);
  st.counters["GFLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}
BENCHMARK(Attention)->ArgsProduct({{0, 128}, {0, 1}})->ArgNames({"window", "bwd"})->UseRealTime();

// ---------------------------------------------------------------------------- element-wise
void CrossEntropy(benchmark::State& st) {
  auto logits = randv(kN * kV, 1, 2.f);
  std::vector<int32_t> tgt(kN);
  for (int64_t i = 0; i < kN; i++) tgt[size_t(i)] = int32_t(i % kV);
  std::vector<float> lse(kN), d(kN * kV);
  for (auto _ : st) {
    cross_entropy<float>::forward(lse.data(), logits.data(), tgt.data(), kN, kV);
    cross_entropy<float>::backward(d.data(), logits.data(), lse.data(), tgt.data(), kN, kV, 1e-3);
  }
  st.counters["elements/s"] = benchmark::Counter(double(kN * kV), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(CrossEntropy)->UseRealTime();

void SwiGlu(benchmark::State& st) {
  auto h = randv(kN * 2 * kI, 1, 3.f), dout = randv(kN * kI, 2);
  std::vector<float> a(kN * kI), dh(kN * 2 * kI);
  for (auto _ : st) {
    swiglu<float>::forward(a.data(), h.data(), kN, kI, 7.0, 1.702);
    swiglu<float>::backward(dh.data(), dout.data(), h.data(), kN, kI, 7.0, 1.702);
  }
  st.counters["elements/s"] = benchmark::Counter(double(kN * kI), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(SwiGlu)->UseRealTime();

void RmsNorm(benchmark::State& st) {
  auto x = randv(kN * kD, 1), g = randv(kD, 2), dy = randv(kN * kD, 3);
  std::vector<float> y(kN * kD), r(kN), dx(kN * kD), dg(kD);
  for (auto _ : st) {
    rmsnorm<float>::forward(y.data(), r.data(), x.data(), g.data(), kN, kD, 1e-5);
    rmsnorm<float>::backward(dx.data(), dg.data(), dy.data(), x.data(), g.data(), r.data(), kN, kD);
  }
}
BENCHMARK(RmsNorm)->UseRealTime();

// ---------------------------------------------------------------------------- routing
void RouteAndDispatch(benchmark::State& st) {
  const int64_t E = st.range(0), k = 2;
  auto logits = randv(kN * E, 1), x = randv(kN * kD, 2);
  std::vector<int32_t> idx(kN * k), order(kN * k), pos(kN * k);
  std::vector<int64_t> off(E + 1);
  std::vector<float> w(kN * k), xe(kN * k * kD), out(kN * kD);
  for (auto _ : st) {
    router<float>::forward(idx.data(), w.data(), logits.data(), nullptr, kN, E, k);
    moe_sort(order.data(), pos.data(), off.data(), idx.data(), kN, E, k);
    const MoeRouting r{kN, E, k, order.data(), pos.data(), off.data()};
    moe_gather<float>::forward(xe.data(), x.data(), r, kD);
    moe_combine<float>::forward(out.data(), xe.data(), w.data(), r, kD);
  }
}
BENCHMARK(RouteAndDispatch)->Arg(8)->Arg(64)->ArgName("E")->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
