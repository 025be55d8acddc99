// bf16 GEMM for the linear layers: fp32 operands are rounded to bf16 (nearest even) into dense
// scratch copies, multiplied by oneDNN's matmul on AVX512-BF16 dot products with fp32
// accumulation, and written to an fp32 result. Master weights, gradients and optimizer state
// stay fp32; only the products are bf16.
#include <oneapi/dnnl/dnnl.hpp>

#include <bit>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "core/bf16.hpp"
#include "core/error.hpp"
#include "kernels/gemm.hpp"
#include "kernels/parallel.hpp"

namespace moelab {

namespace {

// Copies a rows x cols view with leading dimension ld into a dense bf16 buffer.
void to_bf16(std::vector<uint16_t>& out, const float* x, int64_t rows, int64_t cols, int64_t ld) {
  out.resize(size_t(rows * cols));
  uint16_t* o = out.data();
#pragma omp parallel for schedule(static) if (parallel_worth(rows * cols))
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) o[r * cols + c] = bf16_from_float(x[r * ld + c]);
}

struct Engine {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  // (ta, tb, accumulate) -> primitive with runtime shapes and strides: the expert GEMMs change
  // their row counts every step, and a primitive per shape would be compiled again and again.
  std::map<std::tuple<bool, bool, bool>, dnnl::matmul> cache;
  std::vector<uint16_t> a, b;
};

// One per thread: the experts of an MoE layer run their products side by side
// (linear_grouped), each with its own primitives and bf16 copies.
Engine& engine() {
  thread_local Engine e;
  return e;
}

}  // namespace

void gemm_bf16(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
               const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  using dnnl::memory;
  using tag = memory::format_tag;
  check(beta == 0.f || beta == 1.f, "gemm_bf16: beta must be 0 or 1");
  if (M == 0 || N == 0) return;
  Engine& e = engine();
  // Operands keep their storage orientation; a transposed one is described as column-major.
  if (ta == Trans::N)
    to_bf16(e.a, A, M, K, lda);
  else
    to_bf16(e.a, A, K, M, lda);
  if (tb == Trans::N)
    to_bf16(e.b, B, K, N, ldb);
  else
    to_bf16(e.b, B, N, K, ldb);
  const memory::desc ad({M, K}, memory::data_type::bf16, ta == Trans::N ? tag::ab : tag::ba);
  const memory::desc bd({K, N}, memory::data_type::bf16, tb == Trans::N ? tag::ab : tag::ba);
  const memory::desc cd({M, N}, memory::data_type::f32, memory::dims{ldc, 1});
  const auto key = std::make_tuple(ta == Trans::T, tb == Trans::T, beta != 0.f);
  auto it = e.cache.find(key);
  if (it == e.cache.end()) {
    const memory::dim R = DNNL_RUNTIME_DIM_VAL;
    // Runtime dims with a format tag, not runtime strides: the latter fall to a reference kernel.
    const memory::desc ar({R, R}, memory::data_type::bf16, ta == Trans::N ? tag::ab : tag::ba);
    const memory::desc br({R, R}, memory::data_type::bf16, tb == Trans::N ? tag::ab : tag::ba);
    const memory::desc cr({R, R}, memory::data_type::f32, memory::dims{R, 1});
    dnnl::primitive_attr attr;
    if (beta != 0.f) {
      dnnl::post_ops po;
      po.append_sum(1.f);
      attr.set_post_ops(po);
    }
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(ar, br, cr), attr, e.eng);
    check(std::string(pd.impl_info_str()).rfind("ref", 0) != 0, "bf16 matmul has no fast kernel");
    it = e.cache.emplace(key, dnnl::matmul(pd)).first;
  }
  memory am(ad, e.eng, e.a.data()), bm(bd, e.eng, e.b.data()), cm(cd, e.eng, C);
  it->second.execute(e.strm, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
  e.strm.wait();
}

template <>
void gemm_linear<float>(Precision p, Trans ta, Trans tb, int64_t M, int64_t N, int64_t K,
                        const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                        float* C, int64_t ldc) {
  if (p == Precision::BF16)
    gemm_bf16(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
  else
    gemm<float>(ta, tb, M, N, K, 1.f, A, lda, B, ldb, beta, C, ldc);
}

template <>
void gemm_linear<double>(Precision, Trans ta, Trans tb, int64_t M, int64_t N, int64_t K,
                         const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                         double* C, int64_t ldc) {
  gemm<double>(ta, tb, M, N, K, 1.0, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace moelab
