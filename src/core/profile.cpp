#include "core/profile.hpp"

#include "core/sysinfo.hpp"

namespace moelab {

Profile& profile() {
  static Profile p;
  return p;
}

void Profile::add(const char* name, double s) {
  for (auto& [n, t] : seconds)
    if (n == name) {
      t += s;
      return;
    }
  seconds.emplace_back(name, s);
}

ProfileScope::ProfileScope(const char* name) : name_(profile().on ? name : nullptr) {
  if (name_) t0_ = time_now_s();
}

ProfileScope::~ProfileScope() {
  if (name_) profile().add(name_, time_now_s() - t0_);
}

}  // namespace moelab
