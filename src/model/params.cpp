#include "model/params.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <regex>

#include "core/error.hpp"

namespace moelab {

int64_t ParamLayout::add(std::string name, std::vector<int64_t> shape, Init init, bool decay) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  const int64_t off = total;
  tensors.push_back({std::move(name), std::move(shape), off, n, init, decay, false});
  total += n;
  return off;
}

int64_t ParamLayout::add_int(std::string name, std::vector<int64_t> shape, int bits,
                             int64_t bound) {
  check(bits == 32 || bits == 8, "add_int: an integer tensor is int32 or int8");
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  int64_t& total_of = bits == 32 ? total_i32 : total_i8;
  const int64_t off = total_of;
  ints.push_back({std::move(name), std::move(shape), off, n, bits, bound});
  total_of += n;
  return off;
}

const IntTensor* ParamLayout::find_int(std::string_view name) const {
  for (const auto& t : ints)
    if (t.name == name) return &t;
  return nullptr;
}

const TensorView* ParamLayout::find(std::string_view name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

int64_t ParamLayout::set_frozen(const std::string& pattern, bool frozen) {
  std::regex re;
  try {
    re = std::regex(pattern);
  } catch (const std::regex_error&) {
    fail(fmt::format("freeze pattern '{}': not a valid regular expression", pattern));
  }
  int64_t n = 0;
  for (auto& t : tensors)
    if (std::regex_search(t.name, re)) {
      t.frozen = frozen;
      n++;
    }
  return n;
}

PackedLayout layout_pack(const ParamLayout& p) {
  PackedLayout k;
  k.at.assign(p.tensors.size(), PackedLayout::kFrozen);
  for (size_t i = 0; i < p.tensors.size(); i++) {
    if (p.tensors[i].frozen) {
      continue;
    }
    k.at[i] = k.total;
    k.total += p.tensors[i].numel;
  }
  return k;
}

bool PackedLayout::current(const ParamLayout& p) const {
  if (at.size() != p.tensors.size()) {
    return false;
  }
  for (size_t i = 0; i < at.size(); i++) {
    if ((at[i] < 0) != p.tensors[i].frozen) {
      return false;
    }
  }
  return true;
}

namespace {

// Index of the first tensor holding an element at or after `begin` (tensors are in offset
// order, back to back).
size_t layout_first_at(const ParamLayout& p, int64_t begin) {
  const auto& ts = p.tensors;
  const auto it = std::partition_point(
      ts.begin(), ts.end(), [&](const TensorView& t) { return t.offset + t.numel <= begin; });
  return size_t(it - ts.begin());
}

}  // namespace

int64_t PackedLayout::find(const ParamLayout& p, int64_t begin, int64_t n) const {
  check(at.size() == p.tensors.size(), "packed layout: built for another layout");
  check(begin >= 0 && n >= 0 && begin + n <= p.total, "packed layout: a range outside the layout");
  const auto& ts = p.tensors;
  const size_t first = layout_first_at(p, begin);
  bool trained = false, frozen = false;
  for (size_t i = first; i < ts.size() && ts[i].offset < begin + n; i++) {
    if (ts[i].numel == 0) {
      continue;
    }
    (at[i] >= 0 ? trained : frozen) = true;
  }
  if (!trained) {
    return kFrozen;
  }
  if (frozen) {
    return kPartlyFrozen;
  }
  return at[first] + (begin - ts[first].offset);
}

std::vector<PackedLayout::Piece> PackedLayout::pieces(const ParamLayout& p, int64_t begin,
                                                      int64_t n) const {
  check(at.size() == p.tensors.size(), "packed layout: built for another layout");
  std::vector<Piece> out;
  const auto& ts = p.tensors;
  for (size_t i = layout_first_at(p, begin); i < ts.size() && ts[i].offset < begin + n; i++) {
    if (at[i] < 0) {
      continue;
    }
    const int64_t lo = std::max(begin, ts[i].offset);
    const int64_t hi = std::min(begin + n, ts[i].offset + ts[i].numel);
    if (hi > lo) {
      out.push_back({lo - begin, at[i] + (lo - ts[i].offset), hi - lo});
    }
  }
  return out;
}

}  // namespace moelab
