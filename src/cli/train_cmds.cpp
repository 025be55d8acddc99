// moelab train.
#include <memory>
#include <string>

#include "cli/commands.hpp"
#include "core/signals.hpp"
#include "train/experiment.hpp"
#include "train/trainer.hpp"

namespace moelab {

namespace {

struct TrainOptions {
  std::string config;
  ConfigOverrides overrides;
  bool resume = false;
};

}  // namespace

void command_train(CLI::App& app, Commands& c) {
  auto o = std::make_shared<TrainOptions>();
  auto* cmd = app.add_subcommand("train", "a run: phases, checkpoints, metrics");
  cmd->add_option("config", o->config, "experiment TOML")->required();
  options_add_overrides(*cmd, o->overrides);
  cmd->add_flag("--resume", o->resume, "continue from the run's last checkpoint");
  c.add(cmd, [o] {
    const StopScope stop;  // already while the experiment is read (train_run holds its own)
    return train_run(experiment_load(o->config, o->overrides.list()), o->resume);
  });
}

}  // namespace moelab
