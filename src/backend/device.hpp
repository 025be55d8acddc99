#pragma once
// The backend seam. A Device is the context every model, decoder and trainer runs on: it
// allocates the buffers (Buffer<T>), holds what would otherwise be process globals (the GEMM
// precision of the linear layers, the per-op profile) and hands out its op table (Ops<T>).
// Model, train and eval code call ops only through the table, so a new backend (say CUDA) is a
// new table and a new allocator here; none of their code changes. docs/architecture.md.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "core/profile.hpp"
#include "kernels/gemm.hpp"
#include "kernels/kernels.hpp"

namespace moelab {

// ----------------------------------------------------------------------------
// the op table: one entry per kernel, each with the kernel's exact signature (kernels.hpp)

template <typename T>
struct Ops {
  using K = kernels::Kernels<T>;
  decltype(&K::embedding::forward) embedding_forward;
  decltype(&K::embedding::backward) embedding_backward;
  decltype(&K::rmsnorm::forward) rmsnorm_forward;
  decltype(&K::rmsnorm::backward) rmsnorm_backward;
  decltype(&K::linear::forward) linear_forward;
  decltype(&K::linear::backward) linear_backward;
  decltype(&K::linear_grouped::forward) linear_grouped_forward;
  decltype(&K::linear_grouped::backward) linear_grouped_backward;
  decltype(&K::rope::tables) rope_tables;
  decltype(&K::rope::forward) rope_forward;
  decltype(&K::rope::backward) rope_backward;
  decltype(&K::attention::forward) attention_forward;
  decltype(&K::attention::backward) attention_backward;
  decltype(&K::attention_decode::forward) attention_decode;
  decltype(&K::swiglu::forward) swiglu_forward;
  decltype(&K::swiglu::backward) swiglu_backward;
  decltype(&K::router::forward) router_forward;
  decltype(&K::router::backward) router_backward;
  decltype(&K::router::loss_forward) router_loss_forward;
  decltype(&K::router::loss_backward) router_loss_backward;
  decltype(&kernels::moe_sort) moe_sort;
  decltype(&K::moe_gather::forward) moe_gather_forward;
  decltype(&K::moe_gather::backward) moe_gather_backward;
  decltype(&K::moe_combine::forward) moe_combine_forward;
  decltype(&K::moe_combine::backward) moe_combine_backward;
  decltype(&K::cross_entropy::forward) cross_entropy_forward;
  decltype(&K::cross_entropy::backward) cross_entropy_backward;
  decltype(&K::add::forward) add;
  decltype(&K::fusion::forward) fusion_forward;
  decltype(&K::fusion::backward) fusion_backward;
  decltype(&gemm_linear<T>) gemm;  // C = op(A) op(B) + beta C at the given precision
  decltype(&K::logsumexp::forward) logsumexp;
  decltype(&K::argmax::forward) argmax;
  decltype(&K::adamw::update) adamw_update;
  decltype(&K::vec::sumsq) sumsq;
  decltype(&K::vec::sum) sum;
  decltype(&K::vec::scale) scale;
  decltype(&K::vec::fill) fill;
  decltype(&K::vec::fill_normal) fill_normal;
  decltype(&K::vec::gram) gram;
  decltype(&K::vec::rows_copy) rows_copy;
  decltype(&K::sigmoid::forward) sigmoid_forward;
  decltype(&K::sigmoid::backward) sigmoid_backward;
  decltype(&K::lora::merge) lora_merge;
  decltype(&K::lora::expand) lora_expand;
  decltype(&K::delta_sparse::forward) delta_sparse_forward;
  decltype(&K::delta_sparse::backward) delta_sparse_backward;
  decltype(&K::delta_sparse::add) delta_sparse_add;
  decltype(&K::delta_quant::forward) delta_quant_forward;
  decltype(&K::delta_quant::encode) delta_quant_encode;
};

// The number of entries of Ops<T>: a backend fills every one, and tests/unit/test_backend_ops.cpp
// lists every one (both fail to compile when an op is added without them).
inline constexpr size_t kOpCount = 50;
static_assert(sizeof(Ops<float>) == kOpCount * sizeof(void*) &&
                  sizeof(Ops<double>) == kOpCount * sizeof(void*),
              "Ops<T> changed: update kOpCount, every backend's table and the cross-backend test");

// Whether every entry of a table is set (an aggregate initialiser that misses one leaves it null).
template <typename T>
bool ops_complete(const Ops<T>& ops) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(&ops);
  for (size_t i = 0; i < kOpCount; i++) {
    bool set = false;
    for (size_t b = 0; b < sizeof(void*); b++) set = set || bytes[i * sizeof(void*) + b] != 0;
    if (!set) return false;
  }
  return true;
}

// ----------------------------------------------------------------------------
// the device

class Device {
 public:
  virtual ~Device() = default;
  virtual std::string name() const = 0;
  // Zero-filled memory for n bytes, aligned for vector loads; release frees it (with the size it
  // was allocated with). Both keep count of the bytes held, so that the memory a model reports
  // (activation_bytes) can be checked against what it really took.
  void* allocate(size_t bytes) {
    void* p = do_allocate(bytes);
    live_bytes_ += int64_t(bytes);
    return p;
  }
  void release(void* p, size_t bytes) {
    do_release(p);
    live_bytes_ -= int64_t(bytes);
  }
  // Bytes allocated and not yet released on this device.
  int64_t live_bytes() const { return live_bytes_; }
  virtual const Ops<float>& ops_f32() const = 0;
  virtual const Ops<double>& ops_f64() const = 0;

  template <typename T>
  const Ops<T>& ops() const {
    if constexpr (sizeof(T) == sizeof(float))
      return ops_f32();
    else
      return ops_f64();
  }

  Precision precision = Precision::F32;  // linear-layer products in float (double: always exact)
  Profile profile;                       // per-op seconds when profile.on

 protected:
  virtual void* do_allocate(size_t bytes) = 0;
  virtual void do_release(void* p) = 0;

 private:
  std::atomic<int64_t> live_bytes_{0};
};

// The CPU device (oneDNN / OpenBLAS GEMM, OpenMP kernels).
Device& device_cpu();
// The reference device: the scalar loops of backend/reference.hpp, one thread, no BLAS.
Device& device_reference();

// The device models are built on unless told otherwise: the one named by the environment
// variable MOELAB_DEVICE (default "cpu"); an unknown name fails with the list of known ones.
// A backend makes itself known with a line in device_find (backend/device.cpp).
Device& device_default();
Device& device_find(std::string_view name);

// ----------------------------------------------------------------------------
// Buffer: an owning array on a device, zero-filled; the activations and scratch of the blocks.

template <typename T>
class Buffer {
 public:
  Buffer() = default;
  Buffer(Device& dev, int64_t n) { resize(dev, n); }
  // Reallocates to n zeroed elements (contents are not kept); a no-op when the size matches.
  void resize(Device& dev, int64_t n) {
    if (n == n_ && dev_ == &dev) return;
    p_.reset();
    n_ = 0;
    if (n > 0) {
      p_ = Ptr(static_cast<T*>(dev.allocate(size_t(n) * sizeof(T))),
               Free{&dev, size_t(n) * sizeof(T)});
      n_ = n;
    }
    dev_ = &dev;
  }
  // Grows to at least n elements (the decoder alternates between prefill and single steps).
  void grow(Device& dev, int64_t n) {
    if (n > n_) resize(dev, n);
  }
  T* data() { return p_.get(); }
  const T* data() const { return p_.get(); }
  int64_t size() const { return n_; }
  int64_t bytes() const { return n_ * int64_t(sizeof(T)); }
  std::span<T> span() { return {p_.get(), size_t(n_)}; }
  std::span<const T> span() const { return {p_.get(), size_t(n_)}; }
  T& operator[](int64_t i) { return p_.get()[i]; }
  const T& operator[](int64_t i) const { return p_.get()[i]; }

 private:
  struct Free {
    Device* dev;
    size_t bytes;
    void operator()(T* p) const { dev->release(p, bytes); }
  };
  using Ptr = std::unique_ptr<T, Free>;
  Ptr p_{nullptr, Free{nullptr, 0}};
  int64_t n_ = 0;
  Device* dev_ = nullptr;
};

// The default device's profile, and its linear-layer precision (commands and tests that set it).
Profile& profile();
void gemm_set_precision(Precision p);
Precision gemm_precision();

}  // namespace moelab
