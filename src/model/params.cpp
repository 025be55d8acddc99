#include "model/params.hpp"

#include <fmt/format.h>

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

bool ParamLayout::frozen_range(int64_t begin, int64_t n) const {
  for (const auto& t : tensors)
    if (t.offset < begin + n && t.offset + t.numel > begin && !t.frozen) return false;
  return true;
}

}  // namespace moelab
