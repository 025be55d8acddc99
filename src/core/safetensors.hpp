#pragma once
// safetensors files (8-byte little-endian header length, JSON header, raw data), readable by
// any tool that speaks the format. Writes go to a temporary name and are renamed after fsync,
// so a crash never leaves a half-written file under the real name.
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace moelab {

enum class DType { F32, F64, I32, I64, U8 };

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
  template <typename T>
  std::span<const T> as() const {
    return {reinterpret_cast<const T*>(data.data()), data.size() / sizeof(T)};
  }
};

template <typename T>
TensorRef tensor_ref(std::string name, std::span<const T> v, std::vector<int64_t> shape);

void safetensors_write(const std::string& path, std::span<const TensorRef> tensors,
                       const std::map<std::string, std::string>& metadata = {});
std::map<std::string, TensorData> safetensors_read(const std::string& path);

}  // namespace moelab
