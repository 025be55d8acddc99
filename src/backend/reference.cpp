// The reference backend (MOELAB_DEVICE=reference): every op of the table as the scalar loops of
// backend/reference.hpp, in one thread, with exact products in double; host memory. It is the
// second backend that proves the seam: a model, its training step and its decoder run on it
// unchanged (tests/unit/test_backend_ops.cpp), and slowly.
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

#include "backend/device.hpp"
#include "backend/reference.hpp"
#include "core/error.hpp"

namespace moelab {

namespace {

template <typename T>
Ops<T> reference_ops() {
  using K = kernels::Kernels<T>;
  return {
      .embedding_forward = &ref::embedding<T>::forward,
      .embedding_backward = &ref::embedding<T>::backward,
      .rmsnorm_forward = &ref::rmsnorm<T>::forward,
      .rmsnorm_backward = &ref::rmsnorm<T>::backward,
      .linear_forward = &ref::linear<T>::forward,
      .linear_backward = &ref::linear<T>::backward,
      .linear_grouped_forward = &ref::linear_grouped<T>::forward,
      .linear_grouped_backward = &ref::linear_grouped<T>::backward,
      .rope_tables = &K::rope::tables,  // plain serial double arithmetic already
      .rope_forward = &ref::rope<T>::forward,
      .rope_backward = &ref::rope<T>::backward,
      .attention_forward = &ref::attention<T>::forward,
      .attention_backward = &ref::attention<T>::backward,
      .attention_decode = &ref::attention_decode<T>::forward,
      .swiglu_forward = &ref::swiglu<T>::forward,
      .swiglu_backward = &ref::swiglu<T>::backward,
      .router_forward = [](int32_t* idx, T* w, const T* logits, const T* bias, int64_t N, int64_t E,
                           int64_t k) { ref::router<T>::forward(idx, w, logits, N, E, k, bias); },
      .router_backward = &ref::router<T>::backward,
      .router_loss_forward = &ref::router<T>::loss_forward,
      .router_loss_backward = &ref::router<T>::loss_backward,
      .moe_sort = &kernels::moe_sort,  // a serial counting sort already
      .moe_gather_forward = &ref::moe_gather<T>::forward,
      .moe_gather_backward = &ref::moe_gather<T>::backward,
      .moe_combine_forward = &ref::moe_combine<T>::forward,
      .moe_combine_backward = &ref::moe_combine<T>::backward,
      .cross_entropy_forward = &ref::cross_entropy<T>::forward,
      .cross_entropy_backward = &ref::cross_entropy<T>::backward,
      .add = &ref::add<T>::forward,
      .fusion_forward = &ref::fusion<T>::forward,
      .fusion_backward = &ref::fusion<T>::backward,
      .gemm = &ref::gemm<T>,
      .logsumexp = &ref::logsumexp<T>::forward,
      .argmax = &ref::argmax<T>::forward,
      .adamw_update = &ref::adamw<T>::update,
      .sumsq = &ref::vec<T>::sumsq,
      .sum = &ref::vec<T>::sum,
      .scale = &ref::vec<T>::scale,
      .fill = &ref::vec<T>::fill,
      .fill_normal = &ref::vec<T>::fill_normal,
      .gram = &ref::vec<T>::gram,
      .rows_copy = &ref::vec<T>::rows_copy,
      .sigmoid_forward = &ref::sigmoid<T>::forward,
      .sigmoid_backward = &ref::sigmoid<T>::backward,
      .lora_merge = &ref::lora<T>::merge,
      .lora_expand = &ref::lora<T>::expand,
      .delta_sparse_forward = &ref::delta_sparse<T>::forward,
      .delta_sparse_backward = &ref::delta_sparse<T>::backward,
      .delta_sparse_add = &ref::delta_sparse<T>::add,
      .delta_quant_forward = &ref::delta_quant<T>::forward,
      .delta_quant_encode = &ref::delta_quant<T>::encode,
  };
}

class ReferenceDevice final : public Device {
 public:
  ReferenceDevice() {
    check(ops_complete(f32_) && ops_complete(f64_), "the reference device misses an op");
  }
  std::string name() const override { return "reference"; }
  const Ops<float>& ops_f32() const override { return f32_; }
  const Ops<double>& ops_f64() const override { return f64_; }

 protected:
  void* do_allocate(size_t bytes) override {
    void* p = std::calloc(bytes > 0 ? bytes : 1, 1);
    if (!p) fail(fmt::format("out of memory allocating {} bytes", bytes));
    return p;
  }
  void do_release(void* p) override { std::free(p); }

 private:
  Ops<float> f32_ = reference_ops<float>();
  Ops<double> f64_ = reference_ops<double>();
};

}  // namespace

Device& device_reference() {
  static ReferenceDevice dev;
  return dev;
}

}  // namespace moelab
