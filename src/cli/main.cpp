// moelab: the command line. The subcommands register themselves (cli/commands.hpp); main builds
// the tree in help order, parses, and runs the one that was given.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "cli/commands.hpp"
#include "core/signals.hpp"
#include "dist/dist.hpp"
#include "train/collective.hpp"

namespace {
int run_command(int argc, char** argv);
}

int main(int argc, char** argv) {
  using namespace moelab;
  signals_init();  // before any thread exists: see core/signals.hpp
  try {
    train_set_collective(dist_init(&argc, &argv));  // under mpirun / srun: the world
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moelab: error: %s\n", e.what());
    return 1;
  }
  const int rc = run_command(argc, argv);
  dist_finish();
  return rc;
}

namespace {

int run_command(int argc, char** argv) {
  using namespace moelab;
  CLI::App app{"moelab: a laboratory for Mixture-of-Experts language models"};
  app.require_subcommand(1);
  Commands c;

  // Help order: data, models, training and the studies, evaluation and inference, conversion,
  // speed.
  CLI::App& data = command_group(app, "data", "corpora to token shards and subsets");
  command_data_prepare(data, c);
  command_data_inspect(data, c);
  command_data_verify(data, c);

  CLI::App& model = command_group(app, "model", "inspect model configs");
  command_model_info(model, c);
  command_model_dump(model, c);

  command_train(app, c);
  command_study(app, c);
  command_fit(app, c);

  CLI::App& entities = command_group(app, "entities", "entity evaluation sets");
  command_entities_build(entities, c);
  command_eval(app, c);
  command_generate(app, c);
  command_serve(app, c);

  command_upcycle(app, c);
  command_compress(app, c);
  command_export(app, c);
  command_import(app, c);

  CLI::App& bench = command_group(app, "bench", "measure speed");
  command_bench_peak(bench, c);
  command_bench_train(bench, c);
  command_bench_eval(bench, c);

  command_study_renamed(app, c);  // hidden: the old names of the studies

  try {
    app.parse(argc, argv);
    c.renames_announce();
    for (const auto& [cmd, run] : c.list)
      if (cmd->parsed()) return run();
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moelab: error: %s\n", e.what());
    std::fflush(stderr);
    dist_abort(1);  // one rank failing alone would leave the others waiting
    return 1;
  }
  return 0;
}

}  // namespace
