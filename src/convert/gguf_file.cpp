// GGUF files (gguf.hpp): storage types and the container, version 3 as ggml's gguf.cpp reads it
// (little-endian; strings as u64 length + bytes; tensor data aligned to general.alignment, 32).
#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "convert/gguf.hpp"
#include "core/bf16.hpp"
#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/safetensors.hpp"

namespace moelab {

namespace fs = std::filesystem;

namespace {

constexpr uint32_t kVersion = 3;
constexpr uint64_t kAlign = 32;
// gguf_type numbers (ggml/include/gguf.h)
enum : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kStr = 8,
  kArr = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12
};

uint64_t align_up(uint64_t x) {
  return (x + kAlign - 1) / kAlign * kAlign;
}

class Writer {
 public:
  void u32(uint32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void i32(int32_t v) { raw(&v, 4); }
  void f32(float v) { raw(&v, 4); }
  void str(const std::string& s) {
    u64(s.size());
    raw(s.data(), s.size());
  }
  void raw(const void* p, size_t n) { buf_.append(static_cast<const char*>(p), n); }
  void pad() { buf_.append(align_up(buf_.size()) - buf_.size(), '\0'); }
  std::string& bytes() { return buf_; }

 private:
  std::string buf_;
};

void write_value(Writer& w, const GgufValue& v) {
  using K = GgufValue::Kind;
  switch (v.kind) {
    case K::U32:
      w.u32(kU32);
      w.u32(uint32_t(v.uint_value));
      return;
    case K::I32:
      w.u32(kI32);
      w.i32(int32_t(v.int_value));
      return;
    case K::F32:
      w.u32(kF32);
      w.f32(float(v.float_value));
      return;
    case K::Bool: {
      w.u32(kBool);
      const uint8_t b = v.bool_value ? 1 : 0;
      w.raw(&b, 1);
      return;
    }
    case K::Str:
      w.u32(kStr);
      w.str(v.text);
      return;
    case K::ArrStr:
      w.u32(kArr);
      w.u32(kStr);
      w.u64(v.strs.size());
      for (const std::string& s : v.strs) {
        w.str(s);
      }
      return;
    case K::ArrF32:
      w.u32(kArr);
      w.u32(kF32);
      w.u64(v.f32s.size());
      w.raw(v.f32s.data(), v.f32s.size() * 4);
      return;
    case K::ArrI32:
      w.u32(kArr);
      w.u32(kI32);
      w.u64(v.i32s.size());
      w.raw(v.i32s.data(), v.i32s.size() * 4);
      return;
    case K::ArrU32:
      w.u32(kArr);
      w.u32(kU32);
      w.u64(v.i32s.size());
      w.raw(v.i32s.data(), v.i32s.size() * 4);
      return;
  }
}

// A bounds-checked cursor over the whole file; every error names the file.
class Reader {
 public:
  Reader(std::string data, std::string path) : d_(std::move(data)), path_(std::move(path)) {}
  template <typename T>
  T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, d_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string str() {
    const uint64_t n = get<uint64_t>();
    need(n);
    std::string s = d_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  void need(uint64_t n) const {
    if (n > d_.size() - pos_) {
      fail(fmt::format("{}: truncated GGUF file", path_));
    }
  }
  // n items of `size` bytes each; the count comes from the file, so it is compared before any
  // multiplication (2^62 items of 4 bytes would wrap to 0)
  void need_items(uint64_t n, uint64_t size) const {
    if (n > (d_.size() - pos_) / size) {
      fail(fmt::format("{}: truncated GGUF file", path_));
    }
  }
  [[noreturn]] void bad(std::string_view why) const { fail(fmt::format("{}: {}", path_, why)); }
  size_t pos() const { return pos_; }
  void seek(size_t p) { pos_ = p; }
  const std::string& data() const { return d_; }

 private:
  std::string d_, path_;
  size_t pos_ = 0;
};

size_t scalar_size(Reader& r, uint32_t t) {
  switch (t) {
    case kU8:
    case kI8:
    case kBool:
      return 1;
    case kU16:
    case kI16:
      return 2;
    case kU32:
    case kI32:
    case kF32:
      return 4;
    case kU64:
    case kI64:
    case kF64:
      return 8;
    default:
      r.bad(fmt::format("metadata value of unknown type {}", t));
  }
}

GgufValue read_value(Reader& r, uint32_t t) {
  using K = GgufValue::Kind;
  GgufValue v;
  if (t == kStr) {
    v.kind = K::Str;
    v.text = r.str();
    return v;
  }
  if (t == kU32) {
    v.kind = K::U32;
    v.uint_value = r.get<uint32_t>();
    return v;
  }
  if (t == kI32) {
    v.kind = K::I32;
    v.int_value = r.get<int32_t>();
    return v;
  }
  if (t == kF32) {
    v.kind = K::F32;
    v.float_value = r.get<float>();
    return v;
  }
  if (t == kBool) {
    v.kind = K::Bool;
    v.bool_value = r.get<uint8_t>() != 0;
    return v;
  }
  if (t == kArr) {
    const uint32_t et = r.get<uint32_t>();
    const uint64_t n = r.get<uint64_t>();
    if (et == kStr) {
      r.need_items(n, 8);  // each string is at least its u64 length
      v.kind = K::ArrStr;
      v.strs.reserve(n);
      for (uint64_t i = 0; i < n; i++) {
        v.strs.push_back(r.str());
      }
      return v;
    }
    if (et == kF32 || et == kI32 || et == kU32) {
      r.need_items(n, 4);
      v.kind = et == kF32 ? K::ArrF32 : et == kI32 ? K::ArrI32 : K::ArrU32;
      if (et == kF32) {
        v.f32s.resize(n);
        std::memcpy(v.f32s.data(), r.data().data() + r.pos(), n * 4);
      } else {
        v.i32s.resize(n);
        std::memcpy(v.i32s.data(), r.data().data() + r.pos(), n * 4);
      }
      r.seek(r.pos() + n * 4);
      return v;
    }
    const size_t size = scalar_size(r, et);  // other arrays are skipped (moelab writes none)
    r.need_items(n, size);
    r.seek(r.pos() + n * size);
    v.kind = K::ArrI32;
    return v;
  }
  const size_t n = scalar_size(r, t);  // other scalars: skipped, kept as a 0
  r.need(n);
  r.seek(r.pos() + n);
  return v;
}

}  // namespace

// ----------------------------------------------------------------------------
// storage types

int64_t gguf_type_bytes(GgmlType t, int64_t n) {
  switch (t) {
    case GgmlType::F32:
      return 4 * n;
    case GgmlType::F16:
    case GgmlType::BF16:
      return 2 * n;
    case GgmlType::Q8_0:
      return n / kQ8Block * (2 + kQ8Block);
  }
  fail("gguf: unknown storage type");
}

void gguf_quantize_q8_0(std::span<const float> x, std::vector<uint8_t>& out) {
  check(x.size() % kQ8Block == 0, "gguf_quantize_q8_0: not whole blocks");
  out.resize(x.size() / kQ8Block * (2 + kQ8Block));
  uint8_t* o = out.data();
  for (size_t b = 0; b < x.size(); b += kQ8Block) {
    float amax = 0.f;
    for (size_t j = 0; j < size_t(kQ8Block); j++) {
      amax = std::max(amax, std::fabs(x[b + j]));
    }
    const float d = amax / 127.f;  // float arithmetic in ggml's order
    const float id = d != 0.f ? 1.f / d : 0.f;
    const uint16_t dh = f16_from_float(d);
    std::memcpy(o, &dh, 2);
    for (size_t j = 0; j < size_t(kQ8Block); j++) {
      o[2 + j] = uint8_t(int8_t(std::roundf(x[b + j] * id)));
    }
    o += 2 + kQ8Block;
  }
}

std::vector<float> gguf_dequantize(GgmlType t, std::span<const uint8_t> bytes, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  const uint8_t* p = bytes.data();
  for (int64_t i = 0; i < n; i++) {
    uint16_t h = 0;
    switch (t) {
      case GgmlType::F32:
        std::memcpy(&out[size_t(i)], p + 4 * i, 4);
        break;
      case GgmlType::F16:
        std::memcpy(&h, p + 2 * i, 2);
        out[size_t(i)] = f16_to_float(h);
        break;
      case GgmlType::BF16:
        std::memcpy(&h, p + 2 * i, 2);
        out[size_t(i)] = bf16_to_float(h);
        break;
      case GgmlType::Q8_0: {
        const uint8_t* blk = p + i / kQ8Block * (2 + kQ8Block);
        std::memcpy(&h, blk, 2);
        out[size_t(i)] = f16_to_float(h) * float(int8_t(blk[2 + i % kQ8Block]));
        break;
      }
    }
  }
  return out;
}

// ----------------------------------------------------------------------------
// the container

const GgufValue* GgufFile::find(const std::string& key) const {
  for (const auto& [k, v] : kv) {
    if (k == key) {
      return &v;
    }
  }
  return nullptr;
}

void gguf_write(const std::string& path, const GgufFile& f) {
  Writer w;
  w.raw("GGUF", 4);
  w.u32(kVersion);
  w.u64(f.tensors.size());
  w.u64(f.kv.size());
  for (const auto& [key, v] : f.kv) {
    w.str(key);
    write_value(w, v);
  }
  uint64_t off = 0;
  for (const GgufTensor& t : f.tensors) {
    w.str(t.name);
    w.u32(uint32_t(t.ne.size()));
    for (int64_t n : t.ne) {
      w.u64(uint64_t(n));
    }
    w.u32(uint32_t(t.type));
    w.u64(off);
    off = align_up(off + t.bytes.size());
  }
  w.pad();
  for (const GgufTensor& t : f.tensors) {
    w.raw(t.bytes.data(), t.bytes.size());
    w.pad();
  }
  file_write_atomic(path, w.bytes());
}

GgufFile gguf_read(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    fail(fmt::format("{}: no such file", path));
  }
  Reader r(file_read(path), path);
  r.need(4);
  if (r.data().compare(0, 4, "GGUF") != 0) {
    r.bad("not a GGUF file (no GGUF magic)");
  }
  r.seek(4);
  const uint32_t version = r.get<uint32_t>();
  if (version != 2 && version != 3) {
    r.bad(fmt::format("GGUF version {} (2 or 3 are read)", version));
  }
  const uint64_t nt = r.get<uint64_t>(), nkv = r.get<uint64_t>();
  GgufFile f;
  uint64_t align = kAlign;
  for (uint64_t i = 0; i < nkv; i++) {
    std::string key = r.str();
    const uint32_t t = r.get<uint32_t>();
    GgufValue v = read_value(r, t);
    if (key == "general.alignment" && v.kind == GgufValue::Kind::U32 && v.uint_value > 0) {
      align = v.uint_value;
    }
    f.kv.emplace_back(std::move(key), std::move(v));
  }
  std::vector<uint64_t> offsets;
  for (uint64_t i = 0; i < nt; i++) {
    GgufTensor t;
    t.name = r.str();
    const uint32_t nd = r.get<uint32_t>();
    if (nd < 1 || nd > 4) {
      r.bad(fmt::format("tensor '{}' has {} dimensions", t.name, nd));
    }
    for (uint32_t d = 0; d < nd; d++) {
      const int64_t n = int64_t(r.get<uint64_t>());
      if (n < 1 || n > (int64_t(1) << 40)) {
        r.bad(fmt::format("tensor '{}': bad shape", t.name));
      }
      t.ne.push_back(n);
    }
    const uint32_t ty = r.get<uint32_t>();
    if (ty != 0 && ty != 1 && ty != 8 && ty != 30) {
      r.bad(fmt::format("tensor '{}' has ggml type {} (F32, F16, BF16 and Q8_0 are read)", t.name,
                        ty));
    }
    t.type = GgmlType(ty);
    offsets.push_back(r.get<uint64_t>());
    f.tensors.push_back(std::move(t));
  }
  const uint64_t size = r.data().size();
  const uint64_t data0 = (r.pos() + align - 1) / align * align;
  for (size_t i = 0; i < f.tensors.size(); i++) {
    GgufTensor& t = f.tensors[i];
    const auto beyond = [&] {
      r.bad(fmt::format("tensor '{}' lies beyond the end of the file", t.name));
    };
    // the element count, checked as it grows: every storage type takes at least a byte per
    // value, so a count above the file's size cannot fit (and 4 dims of 2^40 cannot wrap)
    int64_t n = 1;
    for (int64_t x : t.ne) {
      if (__builtin_mul_overflow(n, x, &n) || uint64_t(n) > size) {
        beyond();
      }
    }
    if (t.type == GgmlType::Q8_0 && t.ne[0] % kQ8Block != 0) {
      r.bad(fmt::format("tensor '{}': Q8_0 rows of {} values", t.name, t.ne[0]));
    }
    const uint64_t nb = uint64_t(gguf_type_bytes(t.type, n));
    // compared by subtraction: an offset near 2^64 would wrap data0 + offset to a small number
    if (data0 > size || offsets[i] > size - data0 || nb > size - data0 - offsets[i]) {
      beyond();
    }
    const auto* p = reinterpret_cast<const uint8_t*>(r.data().data() + data0 + offsets[i]);
    t.bytes.assign(p, p + nb);
  }
  return f;
}

}  // namespace moelab
