// The CPU backend: the kernels of src/kernels (OpenMP, oneDNN / OpenBLAS GEMM) and 64-byte
// aligned host memory.
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

#include "backend/device.hpp"
#include "core/error.hpp"

namespace moelab {

namespace {

template <typename T>
Ops<T> cpu_ops() {
  using K = kernels::Kernels<T>;
  return {&K::embedding::forward,
          &K::embedding::backward,
          &K::rmsnorm::forward,
          &K::rmsnorm::backward,
          &K::linear::forward,
          &K::linear::backward,
          &K::linear_grouped::forward,
          &K::linear_grouped::backward,
          &K::rope::tables,
          &K::rope::forward,
          &K::rope::backward,
          &K::attention::forward,
          &K::attention::backward,
          &K::attention_decode::forward,
          &K::swiglu::forward,
          &K::swiglu::backward,
          &K::router::forward,
          &K::router::backward,
          &K::router::loss_forward,
          &K::router::loss_backward,
          &kernels::moe_sort,
          &K::moe_gather::forward,
          &K::moe_gather::backward,
          &K::moe_combine::forward,
          &K::moe_combine::backward,
          &K::cross_entropy::forward,
          &K::cross_entropy::backward,
          &K::add::forward,
          &K::fusion::forward,
          &K::fusion::backward,
          &gemm_linear<T>,
          &K::logsumexp::forward,
          &K::argmax::forward,
          &K::adamw::update,
          &K::vec::sumsq,
          &K::vec::sum,
          &K::vec::scale,
          &K::vec::fill,
          &K::vec::fill_normal,
          &K::vec::gram,
          &K::vec::rows_copy,
          &K::sigmoid::forward,
          &K::sigmoid::backward,
          &K::lora::merge,
          &K::lora::expand,
          &K::delta_sparse::forward,
          &K::delta_sparse::backward,
          &K::delta_sparse::add,
          &K::delta_quant::forward,
          &K::delta_quant::encode};
}

class CpuDevice final : public Device {
 public:
  CpuDevice() { check(ops_complete(f32_) && ops_complete(f64_), "the CPU device misses an op"); }
  std::string name() const override { return "cpu"; }
  const Ops<float>& ops_f32() const override { return f32_; }
  const Ops<double>& ops_f64() const override { return f64_; }

 protected:
  void* do_allocate(size_t bytes) override {
    constexpr size_t kAlign = 64;  // a cache line, and one AVX-512 register
    const size_t n = (bytes + kAlign - 1) / kAlign * kAlign;
    void* p = std::aligned_alloc(kAlign, n);
    if (!p) fail(fmt::format("out of memory allocating {} bytes", bytes));
    std::memset(p, 0, n);
    return p;
  }
  void do_release(void* p) override { std::free(p); }

 private:
  Ops<float> f32_ = cpu_ops<float>();
  Ops<double> f64_ = cpu_ops<double>();
};

}  // namespace

Device& device_cpu() {
  static CpuDevice dev;
  return dev;
}

}  // namespace moelab
