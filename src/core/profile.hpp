#pragma once
// Per-op wall-clock breakdown for `moelab bench train --profile`. Off by default; when off a
// scope costs one branch. Each device holds one (backend/device.hpp).
#include <string>
#include <utility>
#include <vector>

namespace moelab {

struct Profile {
  bool on = false;
  std::vector<std::pair<std::string, double>> seconds;  // op name -> total seconds
  void add(const char* name, double s);
  void clear() { seconds.clear(); }
};

// Times its scope into a profile (one branch when the profile is off).
class ProfileScope {
 public:
  ProfileScope(Profile& p, const char* name);
  ~ProfileScope();
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  Profile& p_;
  const char* name_;
  double t0_ = 0;
};

}  // namespace moelab
