#include "core/safetensors.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.hpp"

namespace moelab {

namespace {

constexpr const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "F32";
    case DType::F64:
      return "F64";
    case DType::I32:
      return "I32";
    case DType::I64:
      return "I64";
  }
  return "?";
}

constexpr size_t dtype_size(DType t) {
  return (t == DType::F32 || t == DType::I32) ? 4 : 8;
}

DType dtype_parse(const std::string& s, const std::string& path) {
  for (DType t : {DType::F32, DType::F64, DType::I32, DType::I64})
    if (s == dtype_name(t)) return t;
  fail(path + ": unsupported safetensors dtype '" + s + "'");
}

template <typename T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return DType::F32;
  if constexpr (std::is_same_v<T, double>) return DType::F64;
  if constexpr (std::is_same_v<T, int32_t>) return DType::I32;
  if constexpr (std::is_same_v<T, int64_t>) return DType::I64;
}

}  // namespace

int64_t TensorData::numel() const {
  return int64_t(data.size() / dtype_size(dtype));
}

template <typename T>
TensorRef tensor_ref(std::string name, std::span<const T> v, std::vector<int64_t> shape) {
  return {std::move(name), dtype_of<T>(), std::move(shape), std::as_bytes(v)};
}
template TensorRef tensor_ref(std::string, std::span<const float>, std::vector<int64_t>);
template TensorRef tensor_ref(std::string, std::span<const double>, std::vector<int64_t>);
template TensorRef tensor_ref(std::string, std::span<const int32_t>, std::vector<int64_t>);
template TensorRef tensor_ref(std::string, std::span<const int64_t>, std::vector<int64_t>);

void safetensors_write(const std::string& path, std::span<const TensorRef> tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  size_t offset = 0;
  for (const auto& t : tensors) {
    int64_t n = 1;
    for (int64_t s : t.shape) n *= s;
    check(size_t(n) * dtype_size(t.dtype) == t.data.size(), "tensor '" + t.name + "' shape/size");
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.data.size()}}};
    offset += t.data.size();
  }
  std::string hs = header.dump();
  hs.append((8 - hs.size() % 8) % 8, ' ');  // keep the data 8-byte aligned
  uint64_t hlen = hs.size();

  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail(path + ": cannot write (" + std::strerror(errno) + ")");
  auto put = [&](const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      ssize_t w = ::write(fd, c, n);
      if (w <= 0) {
        std::string why = std::strerror(errno);
        ::close(fd);
        ::unlink(tmp.c_str());
        fail(path + ": write failed (" + why + ")");
      }
      c += w;
      n -= size_t(w);
    }
  };
  put(&hlen, 8);
  put(hs.data(), hs.size());
  for (const auto& t : tensors) put(t.data.data(), t.data.size());
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    fail(path + ": fsync/close failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    fail(path + ": rename failed (" + std::strerror(errno) + ")");
  }
}

std::map<std::string, TensorData> safetensors_read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path + ": cannot open");
  f.seekg(0, std::ios::end);
  uint64_t size = uint64_t(f.tellg());
  f.seekg(0);
  uint64_t hlen = 0;
  if (size < 8 || !f.read(reinterpret_cast<char*>(&hlen), 8) || hlen > size - 8)
    fail(path + ": not a safetensors file (bad header length)");
  std::string hs(hlen, '\0');
  f.read(hs.data(), std::streamsize(hlen));
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(hs);
  } catch (const std::exception& e) {
    fail(path + ": bad safetensors header JSON");
  }
  uint64_t data_size = size - 8 - hlen;
  std::map<std::string, TensorData> out;
  for (auto& [name, v] : header.items()) {
    if (name == "__metadata__") continue;
    TensorData t;
    t.dtype = dtype_parse(v.at("dtype").get<std::string>(), path);
    t.shape = v.at("shape").get<std::vector<int64_t>>();
    auto off = v.at("data_offsets").get<std::vector<uint64_t>>();
    int64_t n = 1;
    for (int64_t s : t.shape) n *= s;
    if (off.size() != 2 || off[1] < off[0] || off[1] > data_size ||
        off[1] - off[0] != uint64_t(n) * dtype_size(t.dtype))
      fail(path + ": tensor '" + name + "' has bad data_offsets");
    t.data.resize(off[1] - off[0]);
    f.seekg(std::streamoff(8 + hlen + off[0]));
    f.read(reinterpret_cast<char*>(t.data.data()), std::streamsize(t.data.size()));
    if (!f) fail(path + ": truncated");
    out.emplace(name, std::move(t));
  }
  return out;
}

}  // namespace moelab
