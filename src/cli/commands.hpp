#pragma once
// The moelab command line: one registration function per subcommand, in the cli file of its
// group. Each adds its subcommand to the app or group it is given, with its options and the
// action that runs once they are parsed; main creates the groups, calls these in help order,
// parses and runs the one that was given.
#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace moelab {

// The registered subcommands and what each runs (its exit status). An action holds its options
// by shared_ptr: they live as long as the action that reads them.
struct Commands {
  std::vector<std::pair<CLI::App*, std::function<int()>>> list;
  void add(CLI::App* cmd, std::function<int()> run) { list.emplace_back(cmd, std::move(run)); }
};

// A group of subcommands (moelab model, data, entities, bench): exactly one of them is given.
inline CLI::App& command_group(CLI::App& app, const std::string& name,
                               const std::string& description) {
  CLI::App* group = app.add_subcommand(name, description);
  group->require_subcommand(1);
  return *group;
}

// ---- moelab model (cli/model_cmds.cpp)
void command_model_info(CLI::App& model, Commands& c);
void command_model_dump(CLI::App& model, Commands& c);
void command_export(CLI::App& app, Commands& c);  // moelab export
// ---- moelab export hf, moelab import hf (cli/hf_cmds.cpp)
void command_export_hf(CLI::App& exp, Commands& c);  // a subcommand of moelab export
void command_import(CLI::App& app, Commands& c);

// ---- moelab upcycle (cli/upcycle_cmds.cpp)
void command_upcycle(CLI::App& app, Commands& c);

// ---- moelab compress (cli/compress_cmds.cpp)
void command_compress(CLI::App& app, Commands& c);

// ---- moelab data (cli/data_cmds.cpp)
void command_data_prepare(CLI::App& data, Commands& c);
void command_data_inspect(CLI::App& data, Commands& c);
void command_data_verify(CLI::App& data, Commands& c);

// ---- moelab entities, moelab eval (cli/eval_cmds.cpp)
void command_entities_build(CLI::App& entities, Commands& c);
void command_eval(CLI::App& app, Commands& c);

// ---- moelab generate (cli/generate_cmds.cpp)
void command_generate(CLI::App& app, Commands& c);

// ---- moelab serve (cli/serve_cmds.cpp)
void command_serve(CLI::App& app, Commands& c);

// ---- moelab train (cli/train_cmds.cpp)
void command_train(CLI::App& app, Commands& c);

// ---- moelab run, moelab report (cli/study_cmds.cpp)
void command_run(CLI::App& app, Commands& c);
void command_report(CLI::App& app, Commands& c);
void command_ct(CLI::App& app, Commands& c);

// ---- moelab sweep plan, moelab sweep run (cli/sweep_cmds.cpp)
void command_sweep_plan(CLI::App& sweep, Commands& c);
void command_sweep_run(CLI::App& sweep, Commands& c);

// ---- moelab fit (cli/fit_cmds.cpp)
void command_fit(CLI::App& app, Commands& c);

// ---- moelab bench (cli/bench_cmds.cpp; what they measure: cli/bench.cpp)
void command_bench_peak(CLI::App& bench, Commands& c);
void command_bench_train(CLI::App& bench, Commands& c);
void command_bench_eval(CLI::App& bench, Commands& c);

}  // namespace moelab
