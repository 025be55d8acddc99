#include "core/safetensors.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
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
    case DType::U8:
      return "U8";
  }
  return "?";
}

constexpr size_t dtype_size(DType t) {
  return t == DType::U8 ? 1 : (t == DType::F32 || t == DType::I32) ? 4 : 8;
}

// A name or value from the file as it goes into a message: long ones cut (fail() escapes).
std::string shown(const std::string& s) {
  return one_line(s, 100);
}

DType dtype_parse(const std::string& s, const std::string& where) {
  for (DType t : {DType::F32, DType::F64, DType::I32, DType::I64, DType::U8})
    if (s == dtype_name(t)) return t;
  fail(where + ": unsupported dtype '" + shown(s) + "' (F32, F64, I32, I64 or U8)");
}

template <typename T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return DType::F32;
  if constexpr (std::is_same_v<T, double>) return DType::F64;
  if constexpr (std::is_same_v<T, int32_t>) return DType::I32;
  if constexpr (std::is_same_v<T, int64_t>) return DType::I64;
  if constexpr (std::is_same_v<T, uint8_t>) return DType::U8;
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
template TensorRef tensor_ref(std::string, std::span<const uint8_t>, std::vector<int64_t>);

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

// ----------------------------------------------------------------------------
// reading: the header is checked whole against the file before any tensor is read, so a file
// with bytes inserted, cut or flipped is refused with one line naming it (and the tensor), never
// loaded shifted.

namespace {

// The upper bound the reference implementation puts on the header (100 MB).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct Entry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // in the data section
};

Entry parse_entry(const std::string& path, const std::string& name, const nlohmann::json& v,
                  uint64_t data_size) {
  const std::string where = path + ": tensor '" + shown(name) + "'";
  auto bad = [&](const std::string& why) { fail(where + ": " + why); };
  if (!v.is_object()) bad("is not a JSON object");
  for (const auto& [k, _] : v.items())
    if (k != "dtype" && k != "shape" && k != "data_offsets")
      bad("unknown field '" + shown(k) + "'");
  const auto dt = v.find("dtype"), sh = v.find("shape"), off = v.find("data_offsets");
  if (dt == v.end() || !dt->is_string()) bad("'dtype' is missing or not a string");
  if (sh == v.end() || !sh->is_array()) bad("'shape' is missing or not a list");
  if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
      !(*off)[1].is_number_unsigned())
    bad("'data_offsets' is missing or not two non-negative integers");
  Entry e;
  e.name = name;
  e.dtype = dtype_parse(dt->get<std::string>(), where);
  const uint64_t esize = dtype_size(e.dtype);
  uint64_t numel = 1;
  for (const auto& d : *sh) {
    if (!d.is_number_unsigned() || d.get<uint64_t>() > uint64_t(INT64_MAX))
      bad("'shape' must hold non-negative integers below 2^63");
    const uint64_t n = d.get<uint64_t>();
    // Bounded by the data section: no product can overflow past this check.
    if (n > 0 && numel > data_size / esize / n) bad("'shape' is larger than the file");
    numel *= n;
    e.shape.push_back(int64_t(n));
  }
  e.begin = (*off)[0].get<uint64_t>();
  e.end = (*off)[1].get<uint64_t>();
  if (e.begin > e.end || e.end > data_size)
    bad(fmt::format("'data_offsets' [{}, {}] outside the data section of {} bytes", e.begin, e.end,
                    data_size));
  if (e.end - e.begin != numel * esize)
    bad(fmt::format("'data_offsets' span {} bytes but the shape and dtype need {}", e.end - e.begin,
                    numel * esize));
  return e;
}

}  // namespace

std::map<std::string, TensorData> safetensors_read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path + ": cannot open");
  f.seekg(0, std::ios::end);
  const uint64_t size = uint64_t(f.tellg());
  f.seekg(0);
  uint64_t hlen = 0;
  if (size < 8 || !f.read(reinterpret_cast<char*>(&hlen), 8))
    fail(path + ": not a safetensors file (shorter than 8 bytes)");
  if (hlen < 2 || hlen > kMaxHeaderBytes || hlen > size - 8)
    fail(fmt::format("{}: not a safetensors file (header length {} in a file of {} bytes)", path,
                     hlen, size));
  std::string hs(hlen, '\0');
  if (!f.read(hs.data(), std::streamsize(hlen))) fail(path + ": cannot read the header");
  const nlohmann::json header = nlohmann::json::parse(hs, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object())
    fail(path + ": the safetensors header is not a JSON object");
  const uint64_t data_size = size - 8 - hlen;
  std::vector<Entry> entries;
  for (const auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) fail(path + ": '__metadata__' is not a JSON object");
      continue;
    }
    entries.push_back(parse_entry(path, name, v, data_size));
  }
  // The tensors tile the data section exactly: no gap, no overlap, nothing before or after.
  std::vector<const Entry*> order;
  for (const Entry& e : entries) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t at = 0;
  for (const Entry* e : order) {
    if (e->begin != at)
      fail(fmt::format("{}: tensor '{}' starts at byte {} of the data section, {}", path,
                       shown(e->name), e->begin,
                       e->begin < at ? "inside the tensor before it"
                                     : fmt::format("leaving a gap after byte {}", at)));
    at = e->end;
  }
  if (at != data_size)
    fail(fmt::format("{}: the tensors hold {} bytes but the data section has {} ({} the file)",
                     path, at, data_size,
                     at < data_size ? "bytes inserted into or appended to" : "bytes missing from"));
  std::map<std::string, TensorData> out;
  for (Entry& e : entries) {
    TensorData t;
    t.dtype = e.dtype;
    t.shape = std::move(e.shape);
    t.data.resize(e.end - e.begin);
    f.seekg(std::streamoff(8 + hlen + e.begin));
    if (!f.read(reinterpret_cast<char*>(t.data.data()), std::streamsize(t.data.size())))
      fail(path + ": cannot read tensor '" + shown(e.name) + "'");
    out.emplace(e.name, std::move(t));
  }
  return out;
}

}  // namespace moelab
