#include "study/ct_measure.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/safetensors.hpp"
#include "core/sysinfo.hpp"
#include "eval/evalset.hpp"
#include "train/checkpoint.hpp"
#include "train/trainer.hpp"

namespace moelab {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

// ----------------------------------------------------------------------------
// losses and memory

ojson ct_losses(const std::string& ckpt, const std::vector<std::string>& subsets,
                const Experiment& x, const DataDir& data) {
  if (x.eval_every <= 0) return nullptr;
  Model<float> model(config_load((fs::path(ckpt) / "config.json").string()), x.batch_size,
                     x.seq_len);
  checkpoint_load(ckpt, model, nullptr);
  std::vector<int32_t> tok, tgt;
  ojson v = ojson::object();
  for (const std::string& s : subsets) {
    DataLoader loader(data, s, "val", x.seq_len, 0);
    const int64_t n =
        std::min<int64_t>(x.eval_batches, int64_t(loader.sequences() / uint64_t(x.batch_size)) + 1);
    double sum = 0;
    for (int64_t b = 0; b < n; b++) {
      loader.next(x.batch_size, tok, tgt);
      sum += model.forward(tok, tgt).lm;
    }
    v[s] = sum / double(n);
  }
  return v;
}

bool ct_rss_peak_reset() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.flush();
  return bool(f);
}

int64_t ct_rss_peak_now() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return peak_rss_bytes();
}

namespace {

// ----------------------------------------------------------------------------
// how far the experts moved: cosine similarity to the dense FFN and between experts

// The dense FFN matrices of the study's base by tensor name ([1, in, out] each).
using DenseMats = std::map<std::string, TensorData>;

DenseMats dense_mats(const std::string& base) {
  DenseMats out;
  for (auto& [name, t] : safetensors_read((fs::path(base) / "model.safetensors").string()))
    if (name.ends_with(".mlp.experts.gate_up_proj") || name.ends_with(".mlp.experts.down_proj"))
      out.emplace(name, std::move(t));
  return out;
}

double cosine(const float* a, const float* b, int64_t n) {
  double ab = 0, aa = 0, bb = 0;
  for (int64_t i = 0; i < n; i++) {
    ab += double(a[i]) * double(b[i]);
    aa += double(a[i]) * double(a[i]);
    bb += double(b[i]) * double(b[i]);
  }
  return aa > 0 && bb > 0 ? ab / std::sqrt(aa * bb) : 0.0;
}

struct CosineSums {
  double to_dense = 0, to_dense_min = 1, pairs = 0, pairs_min = 1;
  int64_t n_dense = 0, n_pairs = 0;
  void add_dense(double v) { to_dense += v, to_dense_min = std::min(to_dense_min, v), n_dense++; }
  void add_pair(double v) { pairs += v, pairs_min = std::min(pairs_min, v), n_pairs++; }
};

// One routed weight's experts, whole (base plus delta), against the dense matrix `dense` (null
// when its shape differs, as with granularity) and against each other.
void cosine_weight(const Model<float>& m, const Weight& w, const TensorData* dense, CosineSums& s) {
  const int64_t n = w.in * w.out;
  std::vector<float> wbuf(size_t(m.rebuild_size()));
  const Ctx<float> c = m.ctx_infer(wbuf.data());
  std::vector<float> all(size_t(w.experts * n));
  for (int64_t e = 0; e < w.experts; e++) weight_expert_dense(c, w, e, all.data() + e * n);
  if (dense && dense->numel() == n)
    for (int64_t e = 0; e < w.experts; e++)
      s.add_dense(cosine(all.data() + e * n, dense->as<float>().data(), n));
  for (int64_t e = 0; e < w.experts; e++)
    for (int64_t f = e + 1; f < w.experts; f++)
      s.add_pair(cosine(all.data() + e * n, all.data() + f * n, n));
}

ojson cosines(const Model<float>& m, const DenseMats& dense) {
  CosineSums s;
  for (const FfnParams& f : m.blocks().ffn) {
    const std::string pre = fmt::format("model.layers.{}.mlp.experts.", f.layer);
    const auto find = [&](const char* name) {
      auto it = dense.find(pre + name);
      return it == dense.end() ? nullptr : &it->second;
    };
    for (const FfnParams* p : {&f, f.ct ? &f.ct->experts : nullptr}) {
      if (!p || p->up.experts < 2) continue;
      cosine_weight(m, p->up, find("gate_up_proj"), s);
      cosine_weight(m, p->down, find("down_proj"), s);
    }
  }
  if (s.n_pairs == 0) return nullptr;
  ojson j = {{"pairwise_mean", s.pairs / double(s.n_pairs)}, {"pairwise_min", s.pairs_min}};
  if (s.n_dense > 0)
    j.update({{"to_dense_mean", s.to_dense / double(s.n_dense)}, {"to_dense_min", s.to_dense_min}});
  return j;
}

class ExpertCosineHook : public TrainerHook {
 public:
  explicit ExpertCosineHook(std::string base) : base_(std::move(base)) {}
  void on_open(Trainer&) override { dense_ = dense_mats(base_); }
  void on_evaluate(Trainer& t, const StepStats&) override { last_ = cosines(t.model(), dense_); }
  void metrics(const StepStats&, nlohmann::ordered_json& fields) const override {
    if (!last_.is_null()) {
      fields["expert_cosine"] = last_;
    }
  }
  void on_step_end(Trainer&, const StepStats&) override { last_ = nullptr; }

 private:
  std::string base_;
  DenseMats dense_;
  ojson last_;
};

// ----------------------------------------------------------------------------
// one checkpoint's final evaluation

// Bytes of the routed experts as stored: f32 matrices, biases, bases and deltas, int32
// positions, codes packed at their bit width.
int64_t expert_bytes(const ParamLayout& p) {
  int64_t b = 0;
  for (const TensorView& t : p.tensors)
    if (t.name.find(".experts.") != std::string::npos) b += 4 * t.numel;
  for (const IntTensor& t : p.ints) b += t.bits == 32 ? 4 * t.numel : (t.numel * t.bound + 7) / 8;
  return b;
}

// Held-out losses on both domains, the forgetting metrics on `frozen` (the run's set of samples
// the base recalled; none when absent), the model's bytes in memory and on disk, the peak
// resident set and time of the evaluation, and the experts' cosines.
ojson checkpoint_eval(const std::string& ckpt, const std::string& frozen, const CtConfig& c,
                      const Experiment& x, const DataDir& data, const DenseMats& dense) {
  const bool per_eval = ct_rss_peak_reset();
  const double t0 = time_now_s();
  const ModelConfig cfg = config_load((fs::path(ckpt) / "config.json").string());
  ojson j = {{"checkpoint", ckpt}};
  int64_t model_bytes = 0;
  {
    Model<float> m(cfg, 1, 1);
    checkpoint_load(ckpt, m, nullptr);
    model_bytes = int64_t(m.params.size() * 4 + m.index.size() * 4 + m.codes.size());
    j["params"] = m.layout.total + m.layout.total_i8;
    j["expert_bytes"] = expert_bytes(m.layout);
    std::error_code ec;
    if (!frozen.empty() && fs::exists(frozen, ec)) {
      const EvalSet set = evalset_load(
          frozen, data.fingerprint, {data.vocab_size, cfg.vocab_size, cfg.max_position_embeddings});
      const double te = time_now_s();
      // The base recalled none of the candidates (eval.min_recalled = 0 let the runs go on):
      // nothing to forget, so the metrics are undefined rather than measured.
      j["forgetting"] =
          set.samples.empty()
              ? evalreport_undefined_json()
              : evalreport_json(evaluate(m, *data.tokenizer, set, x.forgetting_batch));
      j["forgetting_s"] = time_now_s() - te;
    }
    j["cosine"] = cosines(m, dense);
  }
  const double tl = time_now_s();
  j["val_loss"] = ct_losses(ckpt, {c.original, c.fresh}, x, data);
  j["val_s"] = time_now_s() - tl;
  std::error_code ec;
  j["model_bytes"] = model_bytes;
  j["file_bytes"] = int64_t(fs::file_size(fs::path(ckpt) / "model.safetensors", ec));
  j["peak_rss_bytes"] = ct_rss_peak_now();
  j["peak_rss_of"] = per_eval ? "evaluation" : "process";
  j["seconds"] = time_now_s() - t0;
  return j;
}

// ----------------------------------------------------------------------------
// the measurements of the study

std::string final_checkpoint(const CtRun& r) {
  const auto list = checkpoint_list(r.x.run_dir);
  if (list.empty()) return "";
  long step = -1;
  std::sscanf(fs::path(list.back()).filename().c_str(), "step_%ld", &step);
  return step == r.x.total_steps() ? list.back() : "";
}

void eval_write(const std::string& path, const std::string& ckpt, const std::string& frozen,
                const CtConfig& c, const CtRun& r, const DataDir& data, const DenseMats& dense,
                ojson extra) {
  std::error_code ec;
  if (fs::exists(path, ec)) return;
  std::fprintf(stderr, "== measuring %s\n", ckpt.c_str());
  ojson j = checkpoint_eval(ckpt, frozen, c, r.x, data, dense);
  for (auto& [k, v] : extra.items()) j[k] = v;
  file_write_atomic(path, j.dump(2) + "\n");
}

// One measurement (an evaluation, a compression and its evaluation) whose error is recorded
// beside where its result would be (PATH.failed.json, read by the report) and named in `failed`
// instead of ending the study; the next start tries it again.
template <typename F>
void measure_guarded(const std::string& result, const std::string& what,
                     std::vector<std::string>& failed, F&& f) {
  const std::string record = ct_measure_failure_path(result);
  std::error_code ec;
  fs::remove(record, ec);
  try {
    f();
  } catch (const std::exception& e) {
    const std::string why = one_line(e.what());
    std::fprintf(stderr, "== %s failed: %s; the study goes on\n", what.c_str(), why.c_str());
    fs::create_directories(fs::path(record).parent_path(), ec);
    file_write_atomic(record, ojson{{"what", what}, {"reason", why}}.dump(2) + "\n");
    failed.push_back(what);
  }
}

}  // namespace

std::unique_ptr<TrainerHook> ct_expert_cosine_hook(const std::string& base) {
  return std::make_unique<ExpertCosineHook>(base);
}

std::string ct_measure_failure_path(const std::string& result) {
  const fs::path p(result);
  return (p.parent_path() / (p.stem().string() + ".failed.json")).string();
}

std::vector<std::string> ct_measure_all(const CtConfig& c, const std::vector<CtRun>& runs,
                                        const DataDir& data) {
  std::vector<std::string> failed;
  const DenseMats dense = dense_mats(c.base);
  for (const CtRun& r : runs) {
    const std::string ckpt = final_checkpoint(r);
    if (ckpt.empty()) continue;
    const std::string frozen = (fs::path(r.x.run_dir) / "evalset.frozen.jsonl").string();
    const std::string path = (fs::path(r.x.run_dir) / "final_eval.json").string();
    measure_guarded(path, fmt::format("the final evaluation of {}", r.dir), failed,
                    [&] { eval_write(path, ckpt, frozen, c, r, data, dense, ojson::object()); });
  }
  for (const CtCompress& k : c.compress)
    for (const CtRun& r : runs) {
      if (r.method->name != k.from) continue;
      const std::string src = final_checkpoint(r);
      if (src.empty()) continue;
      const fs::path dir =
          fs::path(c.run_dir) / "compress" / k.name / fmt::format("seed_{}", r.seed);
      const std::string path = (dir / "eval.json").string();
      measure_guarded(path, fmt::format("compression {} of {}", k.name, r.dir), failed, [&] {
        const std::string model = (dir / "model").string();
        std::error_code ec;
        // a folder without compress.json (written by an older moelab that renamed the model
        // into place first, and stopped before it) is an unfinished compression: done again
        if (!fs::exists(fs::path(model) / "compress.json", ec)) {
          fs::remove_all(model, ec);
          fs::remove(path, ec);
        }
        if (!fs::exists(model, ec)) {
          std::fprintf(stderr, "== compressing %s: %s (%s)\n", src.c_str(), k.spec.c_str(),
                       k.name.c_str());
          fs::create_directories(dir, ec);
          compress_write(src, k.options, model);
        }
        const ojson report = ojson::parse(file_read((fs::path(model) / "compress.json").string()));
        const std::string frozen = (fs::path(r.x.run_dir) / "evalset.frozen.jsonl").string();
        eval_write(path, model, frozen, c, r, data, dense,
                   {{"compress", report}, {"from", src}, {"delta", k.spec}});
      });
    }
  return failed;
}

}  // namespace moelab
