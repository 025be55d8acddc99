// Synthesis of DeRS experts (docs/methods.md §3.14): one expert's forward, x [N, in] -> [N, out],
// at the demo model's gate_up shape (in 128, out 2048), as a plain matrix, a sparse delta rebuilt
// or added directly, a quantized delta rebuilt, and a low-rank delta, for N from one decoding
// step's rows to a training batch's. Which sparse path wins at which N is what weight_forward's
// rule (direct when N * nnz <= in * out) must match:
//   build/bench/moelab_ders_bench
#include <benchmark/benchmark.h>

#include <vector>

#include "core/rng.hpp"
#include "model/weight.hpp"

using namespace moelab;

namespace {

constexpr int64_t kIn = 128, kOut = 2048, kE = 4;

std::vector<float> randv(int64_t n, uint64_t seed) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; i++) v[size_t(i)] = float(0.02 * rng_normal(seed, 0, uint64_t(i)));
  return v;
}

// kind: 0 plain, 1 sparse rebuilt, 2 sparse direct, 3 quant (rebuilt), 4 low-rank r = 4;
// args: kind, N, keep per mille (sparse)
void Expert(benchmark::State& st) {
  const int kind = int(st.range(0));
  const int64_t N = st.range(1), n = kIn * kOut;
  const int64_t nnz = std::max<int64_t>(1, n * st.range(2) / 1000), R = 4;
  ParamLayout layout;
  Weight w{.in = kIn, .out = kOut, .layout = kernels::WLayout::InOut, .experts = kE};
  std::vector<int32_t> pos;
  std::vector<int8_t> codes(size_t(kE * n), 1);
  if (kind == 0) {
    w.w = layout.add("w", {kE, kIn, kOut}, Init::Normal, true);
  } else {
    w.shared = true;
    w.w = layout.add("base", {kIn, kOut}, Init::Normal, true);
  }
  if (kind == 1 || kind == 2) {
    w.delta = {.kind = DeltaKind::Sparse, .nnz = nnz};
    w.delta.values = layout.add("v", {kE, nnz}, Init::Normal, true);
    w.delta.indices = 0;
    for (int64_t e = 0; e < kE; e++)
      for (int64_t j = 0; j < nnz; j++) pos.push_back(int32_t(j * (n / nnz)));
  } else if (kind == 3) {
    w.delta = {.kind = DeltaKind::Quant};
    w.delta.codes = 0;
    w.delta.scales = layout.add("s", {kE, kOut}, Init::Normal, false);
  } else if (kind == 4) {
    LoraSlot s{.A = layout.add("A", {kE, R, kIn}, Init::Normal, true), .rank = R, .out_n = kOut};
    s.B = layout.add("B", {kE, kOut, R}, Init::Normal, true);
    w.lora.push_back(s);
  }
  const std::vector<float> P = randv(layout.total, 1), x = randv(N * kIn, 2);
  std::vector<float> out(static_cast<size_t>(N * kOut)), wbuf(static_cast<size_t>(n)),
      xa(static_cast<size_t>(N * R));
  Device& dev = device_cpu();
  const Ctx<float> c{dev,        dev.ops<float>(), P.data(),    nullptr, &layout,
                     pos.data(), codes.data(),     wbuf.data(), nullptr};
  weight_sparse_path = kind == 1 ? SparsePath::Rebuild : SparsePath::Direct;
  for (auto _ : st) {
    weight_forward(c, w, 1, out.data(), x.data(), N, xa.data());
    benchmark::ClobberMemory();
  }
  weight_sparse_path = SparsePath::Auto;
  st.counters["rows/s"] =
      benchmark::Counter(double(N), benchmark::Counter::kIsIterationInvariantRate);
}

void shapes(benchmark::internal::Benchmark* b) {
  for (int64_t N : {1, 4, 16, 64, 256, 2048}) {
    b->Args({0, N, 0}), b->Args({3, N, 0}), b->Args({4, N, 0});
    for (int64_t keep : {100, 10, 1}) b->Args({1, N, keep}), b->Args({2, N, keep});
  }
}
BENCHMARK(Expert)->Apply(shapes)->ArgNames({"kind", "N", "keep_permille"})->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
