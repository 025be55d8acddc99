#include "eval/metrics.hpp"

#include <algorithm>

#include "backend/device.hpp"
#include "core/error.hpp"

namespace moelab {

double metric_m_in(std::span<const int32_t> generated, std::span<const int32_t> target, int64_t n,
                   int64_t len) {
  check(int64_t(generated.size()) == n * len && int64_t(target.size()) == n * len,
        "M_in: sizes do not match n * len");
  if (n * len == 0) return 0.0;
  int64_t hits = 0;
  for (int64_t i = 0; i < n * len; i++) hits += generated[size_t(i)] == target[size_t(i)];
  return double(hits) / double(n * len);
}

bool metric_m_ex_hit(std::string_view decoded, std::string_view entity) {
  const size_t b = entity.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return false;  // an empty entity matches nothing
  const size_t e = entity.find_last_not_of(" \t\r\n");
  return decoded.find(entity.substr(b, e - b + 1)) != std::string_view::npos;
}

int32_t logits_argmax(const float* z, int64_t V) {
  int32_t idx = 0;
  device_default().ops<float>().argmax(&idx, z, 1, V, V);
  return idx;
}

double metric_top1(std::span<const float> logits, std::span<const int32_t> targets, int64_t V) {
  check(V >= 1 && int64_t(logits.size()) == int64_t(targets.size()) * V,
        "M(f): logits and targets sizes");
  int64_t hits = 0, n = 0;
  for (size_t i = 0; i < targets.size(); i++) {
    if (targets[i] < 0) continue;
    const float* z = logits.data() + i * size_t(V);
    hits += logits_argmax(z, V) == targets[i];
    n++;
  }
  return n ? double(hits) / double(n) : 0.0;
}

}  // namespace moelab
