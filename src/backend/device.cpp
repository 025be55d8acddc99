#include "backend/device.hpp"

#include <fmt/format.h>

#include <cstdlib>

#include "core/error.hpp"

namespace moelab {

Device& device_find(std::string_view name) {
  // Every backend this build knows, by name; a new backend adds its line here.
  if (name == "cpu") return device_cpu();
  if (name == "reference") return device_reference();
  fail(fmt::format("MOELAB_DEVICE: unknown device '{}' (this build has: cpu, reference)", name));
}

Device& device_default() {
  static Device& dev = [] -> Device& {
    const char* name = std::getenv("MOELAB_DEVICE");
    return device_find(name && *name ? name : "cpu");
  }();
  return dev;
}

Profile& profile() {
  return device_default().profile;
}

void gemm_set_precision(Precision p) {
  device_default().precision = p;
}

Precision gemm_precision() {
  return device_default().precision;
}

}  // namespace moelab
