#include "core/safetensors.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/bf16.hpp"
#include "core/error.hpp"
#include "core/fileio.hpp"

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
    case DType::BF16:
      return "BF16";
    case DType::F16:
      return "F16";
  }
  return "?";
}

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::U8:
      return 1;
    case DType::BF16:
    case DType::F16:
      return 2;
    case DType::F32:
    case DType::I32:
      return 4;
    case DType::F64:
    case DType::I64:
      return 8;
  }
  return 0;
}

// A name or value from the file as it goes into a message: long ones cut (fail() escapes).
std::string shown(const std::string& s) {
  return one_line(s, 100);
}

DType dtype_parse(const std::string& s, const std::string& where, DTypes accept) {
  for (DType t : {DType::F32, DType::F64, DType::I32, DType::I64, DType::U8})
    if (s == dtype_name(t)) return t;
  if (accept == DTypes::WithHalf)
    for (DType t : {DType::BF16, DType::F16})
      if (s == dtype_name(t)) return t;
  fail(where + ": unsupported dtype '" + shown(s) + "' (" +
       (accept == DTypes::WithHalf ? "F32, F64, I32, I64, U8, BF16 or F16"
                                   : "F32, F64, I32, I64 or U8") +
       ")");
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

std::vector<float> TensorData::floats() const {
  check(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16,
        "TensorData::floats: not a float tensor");
  if (dtype == DType::F32) {
    const auto v = as<float>();
    return {v.begin(), v.end()};
  }
  const auto h = as<uint16_t>();
  std::vector<float> out(h.size());
  std::transform(h.begin(), h.end(), out.begin(),
                 dtype == DType::BF16 ? bf16_to_float : f16_to_float);
  return out;
}

// ----------------------------------------------------------------------------
// half floats

float bf16_to_float(uint16_t b) {
  return std::bit_cast<float>(uint32_t(b) << 16);
}

float f16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  if (e == 0) return std::copysign(std::ldexp(float(m), -24), sign ? -1.f : 1.f);  // subnormal
  if (e == 31) return std::bit_cast<float>(sign | 0x7F800000u | (m << 13));        // inf, NaN
  return std::bit_cast<float>(sign | ((e + 112) << 23) | (m << 13));
}

uint16_t f16_from_float(float x) {
  const uint32_t u = std::bit_cast<uint32_t>(x);
  const uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return uint16_t(sign | 0x7E00u | ((a >> 13) & 0x3FFu));  // NaN, quiet
  // from halfway between 65504 (the largest half) and 65536 up: ties go to the even inf
  if (a >= 0x477FF000u) return uint16_t(sign | 0x7C00u);
  if (a >= 0x38800000u) {  // a normal half (2^-14 and up): rebias the exponent, round 13 bits
    const uint32_t v = a - 0x38000000u;
    return uint16_t(sign | ((v + 0xFFFu + ((v >> 13) & 1u)) >> 13));
  }
  if (a <= 0x33000000u) return uint16_t(sign);  // at most 2^-25, half the least subnormal: 0
  // a subnormal half: units of 2^-24 from the 24-bit significand, rounded to nearest even
  const uint32_t m = (a & 0x7FFFFFu) | 0x800000u, shift = 126 - (a >> 23);
  const uint32_t q = m >> shift, rest = m & ((1u << shift) - 1), half = 1u << (shift - 1);
  return uint16_t(sign | (q + (rest > half || (rest == half && (q & 1u)))));
}

const char* safetensors_dtype_name(DType t) {
  return dtype_name(t);
}

std::vector<uint16_t> safetensors_half(DType t, std::span<const float> v) {
  check(t == DType::BF16 || t == DType::F16, "safetensors_half: not a half-float dtype");
  std::vector<uint16_t> out(v.size());
  std::transform(v.begin(), v.end(), out.begin(),
                 t == DType::BF16 ? bf16_from_float : f16_from_float);
  return out;
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
  file_fsync_parent(path);
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
                  uint64_t data_size, DTypes accept) {
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
  e.dtype = dtype_parse(dt->get<std::string>(), where, accept);
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

std::map<std::string, TensorData> safetensors_read(const std::string& path, DTypes accept) {
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
    entries.push_back(parse_entry(path, name, v, data_size, accept));
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
