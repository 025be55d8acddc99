#pragma once
// safetensors files (8-byte little-endian header length, JSON header, raw data), readable by
// any tool that speaks the format. Writes go to a temporary name, are fsynced, renamed, and the
// folder fsynced: a crash never leaves a half-written file under the real name. Half floats
// (BF16, F16) are stored as their 16 bits, converted to and from float by the functions at the
// end.
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace moelab {

enum class DType { F32, F64, I32, I64, U8, BF16, F16 };

// The dtypes a read accepts. moelab's own files hold F32, F64, I32, I64 and U8, so a checkpoint
// with half floats was written elsewhere and is refused at its header, naming the tensor and
// the dtype; files from elsewhere (Hugging Face checkpoints) are read with the half floats too.
enum class DTypes { Own, WithHalf };

struct TensorRef {  // a view to write
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::span<const std::byte> data;
};

struct TensorData {  // a tensor read back
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<std::byte> data;
  int64_t numel() const;
  // The values as float, exactly: F32, BF16 or F16 (a bug to call on another dtype).
  std::vector<float> floats() const;
  template <typename T>
  std::span<const T> as() const {
    return {reinterpret_cast<const T*>(data.data()), data.size() / sizeof(T)};
  }
};

template <typename T>
TensorRef tensor_ref(std::string name, std::span<const T> v, std::vector<int64_t> shape);

void safetensors_write(const std::string& path, std::span<const TensorRef> tensors,
                       const std::map<std::string, std::string>& metadata = {});
std::map<std::string, TensorData> safetensors_read(const std::string& path,
                                                   DTypes accept = DTypes::Own);

// Half floats as the format stores them. To float is exact. From float rounds to nearest even,
// overflows to inf and keeps a NaN a (quiet) NaN; float -> BF16 is core/bf16.hpp's
// bf16_from_float, the rounding the bf16 GEMM uses.
float bf16_to_float(uint16_t b);
float f16_to_float(uint16_t h);
uint16_t f16_from_float(float x);
// "F32", "BF16", ...: the dtype as the header spells it.
const char* safetensors_dtype_name(DType t);
// float values as the bits of BF16 or F16, for a TensorRef of that dtype.
std::vector<uint16_t> safetensors_half(DType t, std::span<const float> v);

}  // namespace moelab
