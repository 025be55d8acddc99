#include "core/profile.hpp"

#include "core/sysinfo.hpp"

namespace moelab {

void Profile::add(const char* name, double s) {
  for (auto& [n, t] : seconds)
    if (n == name) {
      t += s;
      return;
    }
  seconds.emplace_back(name, s);
}

ProfileScope::ProfileScope(Profile& p, const char* name) : p_(p), name_(p.on ? name : nullptr) {
  if (name_) t0_ = time_now_s();
}

ProfileScope::~ProfileScope() {
  if (name_) p_.add(name_, time_now_s() - t0_);
}

}  // namespace moelab
