#include "train/hook.hpp"

#include <algorithm>

#include "train/experiment.hpp"
#include "train/hook_forgetting.hpp"
#include "train/hook_replay.hpp"
#include "train/run_page.hpp"

namespace moelab {

TrainerHooks trainer_hooks_from_experiment(const Experiment& x) {
  TrainerHooks hooks;
  if (std::any_of(x.phases.begin(), x.phases.end(), [](auto& p) { return p.focused(); })) {
    hooks.push_back(std::make_unique<ReplayHook>(x));
  }
  hooks.push_back(std::make_unique<ForgettingHook>(x));
  hooks.push_back(std::make_unique<RunPageHook>(x));
  return hooks;
}

}  // namespace moelab
