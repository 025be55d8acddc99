#include "cli/commands.hpp"

#include <fmt/format.h>

#include <cstdio>

#include "core/error.hpp"
#include "train/collective.hpp"

namespace moelab {

void Commands::renamed(const CLI::App* cmd, std::string old_name, std::string new_name) {
  renames.push_back(
      {[cmd] { return cmd->parsed(); }, nullptr, std::move(old_name), std::move(new_name)});
}

void Commands::renamed(const CLI::Option* old_opt, const CLI::Option* new_opt, std::string old_name,
                       std::string new_name) {
  renames.push_back({[old_opt] { return old_opt->count() > 0; },
                     [new_opt] { return new_opt->count() > 0; }, std::move(old_name),
                     std::move(new_name)});
}

void Commands::renames_announce() const {
  for (const Rename& r : renames) {
    if (r.new_given && r.given() && r.new_given()) {
      fail(fmt::format("'{}' is the old name of '{}': give one of them", r.old_name, r.new_name));
    }
  }
  // Under mpirun every rank parses the same command line: one notice is enough.
  const Collective* world = train_collective();
  if (world && world->rank() != 0) {
    return;
  }
  for (const Rename& r : renames) {
    if (r.given()) {
      fmt::print(stderr, "moelab: '{}' is now '{}'; the old name goes in the next release\n",
                 r.old_name, r.new_name);
    }
  }
  std::fflush(stderr);
}

std::string command_path(const CLI::App& cmd) {
  std::string path = cmd.get_name();
  for (const CLI::App* up = cmd.get_parent(); up; up = up->get_parent()) {
    path = (up->get_parent() ? up->get_name() : std::string("moelab")) + " " + path;
  }
  return path;
}

CLI::App& command_renamed(CLI::App& parent, Commands& c, const std::string& old_name,
                          const std::string& new_path, const std::string& description) {
  CLI::App* cmd = parent.add_subcommand(old_name, description);
  cmd->group("");
  c.renamed(cmd, command_path(*cmd), new_path);
  return *cmd;
}

std::vector<std::string> ConfigOverrides::list() const {
  std::vector<std::string> all = sets;
  if (threads_given && threads_given->count() > 0) {
    all.push_back(fmt::format("run.threads={}", threads));
  }
  return all;
}

void options_add_overrides(CLI::App& cmd, ConfigOverrides& o) {
  cmd.add_option("--set", o.sets, "override a key: section.key=value (repeatable)");
  o.threads_given = cmd.add_option("--threads", o.threads,
                                   "threads (default: the file's run.threads; 0: all cores)");
}

}  // namespace moelab
