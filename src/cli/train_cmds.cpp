// moelab train.
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "core/signals.hpp"
#include "train/experiment.hpp"
#include "train/trainer.hpp"

namespace moelab {

namespace {

struct TrainOptions {
  std::string config;
  std::vector<std::string> sets;
  bool resume = false;
};

}  // namespace

void command_train(CLI::App& app, Commands& c) {
  auto o = std::make_shared<TrainOptions>();
  auto* cmd = app.add_subcommand("train", "a run: phases, checkpoints, metrics");
  cmd->add_option("config", o->config, "experiment TOML")->required();
  cmd->add_option("--set", o->sets, "override a key: section.key=value (repeatable)");
  cmd->add_flag("--resume", o->resume, "continue from the run's last checkpoint");
  c.add(cmd, [o] {
    const StopScope stop;  // already while the experiment is read (train_run holds its own)
    return train_run(experiment_load(o->config, o->sets), o->resume);
  });
}

}  // namespace moelab
