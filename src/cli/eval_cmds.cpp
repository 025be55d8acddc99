#include "cli/eval_cmds.hpp"

#include <fmt/format.h>
#include <omp.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/gemm.hpp"
#include "core/sysinfo.hpp"
#include "data/dataset.hpp"
#include "eval/evalset.hpp"
#include "train/checkpoint.hpp"

namespace moelab {

namespace fs = std::filesystem;

void eval_cmd(const EvalOptions& o) {
  if (o.batch < 1) fail(fmt::format("eval: --batch must be positive (not {})", o.batch));
  threads_set(o.threads > 0 ? o.threads : omp_get_num_procs());
  const std::string config_path = (fs::path(o.checkpoint) / "config.json").string();
  const ModelConfig cfg = config_load(config_path);
  const DataDir data = data_open(o.data);
  // A vocabulary padded beyond the tokenizer's is fine (evaluation decodes only the tokenizer's
  // ids); a smaller one cannot embed the data, as in training.
  if (cfg.vocab_size < data.vocab_size)
    fail(fmt::format("{}: vocab_size {} is smaller than the vocabulary of {}'s tokenizer ({})",
                     config_path, cfg.vocab_size, o.data, data.vocab_size));
  // the whole set is validated before the weights are read
  const EvalSet set = evalset_load(o.evalset, data.fingerprint,
                                   {.tokenizer_vocab = data.vocab_size,
                                    .model_vocab = cfg.vocab_size,
                                    .max_positions = cfg.max_position_embeddings});
  Model<float> model(cfg, 1, 1);
  checkpoint_check_tokenizer(o.checkpoint, checkpoint_load(o.checkpoint, model, nullptr),
                             data.fingerprint, o.data);
  const double t0 = time_now_s();
  const EvalReport r = evaluate(model, *data.tokenizer, set, o.batch);
  const double dt = time_now_s() - t0;
  auto row = [](const std::string& name, const EvalMetrics& m) {
    fmt::print("{:<6} {:>8} {:>8.4f} {:>8.4f} {:>8.4f} {:>10.3f}\n", name, m.samples, m.m_in,
               m.m_ex, m.m_f, m.ppl_ent);
  };
  fmt::print("{:<6} {:>8} {:>8} {:>8} {:>8} {:>10}\n", "type", "samples", "M_in", "M_ex", "M(f)",
             "PPL_ent");
  row("all", r.all);
  for (const auto& [type, m] : r.per_type) row(type, m);
  fmt::print("{} samples in {:.2f} s\n", set.samples.size(), dt);
  if (!o.out.empty()) {
    nlohmann::ordered_json all = evalreport_json(r);
    nlohmann::ordered_json out = {{"checkpoint", o.checkpoint}, {"evalset", o.evalset}};
    if (all.contains("per_type")) {
      out["per_type"] = all["per_type"];
      all.erase("per_type");
    }
    out["all"] = all;
    out["seconds"] = dt;
    file_write_atomic(o.out, out.dump(2) + "\n");
  }
}

}  // namespace moelab
