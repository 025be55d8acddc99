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

  // Old spellings, hidden from --help and kept for one release: each one given prints one line
  // on stderr naming its new spelling (renames_announce, after parsing), then works as before.
  struct Rename {
    std::function<bool()> given;
    std::function<bool()> new_given;  // an old flag's new one given too (null for commands)
    std::string old_name, new_name;
  };
  std::vector<Rename> renames;
  void renamed(const CLI::App* cmd, std::string old_name, std::string new_name);
  void renamed(const CLI::Option* old_opt, const CLI::Option* new_opt, std::string old_name,
               std::string new_name);
  // Fails, in one line, on an old flag given with its new one; else prints the notices.
  void renames_announce() const;
};

// "moelab study ct": the names from the root down to cmd.
std::string command_path(const CLI::App& cmd);

// A group of subcommands (moelab model, data, entities, study, bench): exactly one of them is
// given.
inline CLI::App& command_group(CLI::App& app, const std::string& name,
                               const std::string& description) {
  CLI::App* group = app.add_subcommand(name, description);
  group->require_subcommand(1);
  return *group;
}

// A subcommand under its old name, hidden from --help: set up by the same function as the one
// under its new name (new_path, e.g. "moelab study forgetting"), it prints the rename notice.
CLI::App& command_renamed(CLI::App& parent, Commands& c, const std::string& old_name,
                          const std::string& new_path, const std::string& description);

// An old flag of cmd, hidden from --help, that sets what `now` sets (not both at once) and
// prints the rename notice.
template <typename T>
CLI::Option* option_renamed(CLI::App& cmd, Commands& c, const std::string& old_flag,
                            CLI::Option* now, T& value) {
  CLI::Option* old = cmd.add_option(old_flag, value)->group("");
  const std::string path = command_path(cmd);
  c.renamed(old, now, path + " " + old_flag, path + " " + now->get_name());
  return old;
}

// --set KEY=VALUE (repeatable) and --threads N of a command that reads an experiment TOML.
struct ConfigOverrides {
  std::vector<std::string> sets;
  int threads = 0;
  CLI::Option* threads_given = nullptr;
  // The --set overrides in order, then run.threads when --threads was given: the flag wins over
  // the file's key and over a --set of it.
  std::vector<std::string> list() const;
};
void options_add_overrides(CLI::App& cmd, ConfigOverrides& o);

// ---- moelab model (cli/model_cmds.cpp)
void command_model_info(CLI::App& model, Commands& c);
void command_model_dump(CLI::App& model, Commands& c);
void command_export(CLI::App& app, Commands& c);  // moelab export
// ---- moelab export hf, moelab import hf (cli/hf_cmds.cpp)
void command_export_hf(CLI::App& exp, Commands& c);  // a subcommand of moelab export
void command_import(CLI::App& app, Commands& c);
// ---- moelab export gguf, moelab import gguf (cli/gguf_cmds.cpp)
void command_export_gguf(CLI::App& exp, Commands& c);  // a subcommand of moelab export
void command_import_gguf(CLI::App& imp, Commands& c);  // a subcommand of moelab import

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

// ---- moelab study forgetting|ct|ders|sweep|report (cli/study_cmds.cpp), and the old names of
// the studies (run, ct, sweep plan, sweep run, report), hidden
void command_study(CLI::App& app, Commands& c);
void command_study_renamed(CLI::App& app, Commands& c);

// ---- the options and action of moelab study sweep, and of the old moelab sweep plan, on the
// subcommand given (cli/sweep_cmds.cpp)
void command_study_sweep(CLI::App& cmd, Commands& c);
void command_sweep_plan(CLI::App& cmd, Commands& c);

// ---- moelab fit (cli/fit_cmds.cpp)
void command_fit(CLI::App& app, Commands& c);

// ---- moelab bench (cli/bench_cmds.cpp; what they measure: cli/bench.cpp)
void command_bench_peak(CLI::App& bench, Commands& c);
void command_bench_train(CLI::App& bench, Commands& c);
void command_bench_eval(CLI::App& bench, Commands& c);

}  // namespace moelab
