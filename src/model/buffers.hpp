#pragma once
// A struct of buffers lists them once, in a member buffers() that returns references to every
// one (std::tie); its bytes are counted from that list, and a static_assert on the struct's size
// (buffers_all_listed) stops the build when a buffer is added without joining the list.
#include <cstddef>
#include <cstdint>
#include <tuple>

namespace moelab {

// Bytes held by the buffers of a list.
template <typename... B>
int64_t buffers_bytes(const std::tuple<B&...>& list) {
  return std::apply([](const auto&... b) { return (int64_t(0) + ... + b.bytes()); }, list);
}

template <typename List>
struct BuffersSize;
template <typename... B>
struct BuffersSize<std::tuple<B&...>> {
  static constexpr size_t value = (sizeof(B) + ... + size_t(0));
};

// Whether the buffer list (a buffers() result type) covers the struct S, whose other members
// take `others` bytes: true only when S is exactly those buffers and those members.
template <typename S, typename List>
constexpr bool buffers_all_listed(size_t others) {
  return sizeof(S) == BuffersSize<List>::value + others;
}

}  // namespace moelab
