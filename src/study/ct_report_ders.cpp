// The upcycling and DeRS part of the `moelab study ct` report: each trained method's final model
// and each compression of one, side by side on size, memory, speed and quality (held-out losses on
// both domains, forgetting metrics), how far the experts moved from the dense FFN, and a figure
// of quality against bytes.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>

#include "study/report.hpp"

namespace moelab {

namespace fs = std::filesystem;

namespace {

// One row: a trained method's final models, or a compression of them, over the seeds.
struct Variant {
  std::string name, what;
  bool trained = false;
  ojson method;                   // ct.json's entry (trained) or compress entry
  std::vector<ojson> evals;       // final_eval.json / eval.json per seed
  std::vector<ojson> res;         // resources.json per seed (trained)
  std::vector<int64_t> seeds;     // per evaluation (trained)
  std::vector<std::string> dirs;  // the runs' folders (trained)
};

std::string method_what(const ojson& m) {
  const std::string kind = m.value("kind", "");
  if (kind == "full") return "dense, every parameter trains";
  if (kind != "upcycle") return kind;
  const ojson u = m["method"].value("upcycle", ojson::object());
  std::string what = fmt::format("upcycle E={} k={}", u.value("experts", int64_t(4)),
                                 u.value("top_k", int64_t(1)));
  const std::string delta = u.value("delta", "none");
  return what + (delta == "none" ? ", vanilla" : ", DeRS " + delta);
}

std::vector<Variant> variants_read(const std::string& dir, const ojson& ct) {
  std::vector<Variant> out;
  for (const ojson& m : ct["methods"]) {
    Variant v{m["name"], method_what(m), true, m, {}, {}, {}, {}};
    for (const ojson& r : m["runs"]) {
      const fs::path rd = fs::path(dir) / r["dir"].get<std::string>();
      if (ojson e = json_file_or_null((rd / "final_eval.json").string()); e.is_object()) {
        v.evals.push_back(e);
        v.res.push_back(json_file_or_null((rd / "resources.json").string()));
        v.seeds.push_back(r.value("seed", int64_t(0)));
        v.dirs.push_back(rd.string());
      }
    }
    if (!v.evals.empty()) out.push_back(std::move(v));
  }
  for (const ojson& k : ct.value("compress", ojson::array())) {
    Variant v{k["name"],
              fmt::format("{} of {} (base {})", k["delta"].get<std::string>(),
                          k["from"].get<std::string>(), k["base"].get<std::string>()),
              false,
              k,
              {},
              {},
              {},
              {}};
    const fs::path cd = fs::path(dir) / "compress" / v.name;
    std::error_code ec;
    if (fs::is_directory(cd, ec))
      for (const auto& e : fs::directory_iterator(cd))
        if (ojson j = json_file_or_null((e.path() / "eval.json").string()); j.is_object())
          v.evals.push_back(j);
    if (!v.evals.empty()) out.push_back(std::move(v));
  }
  return out;
}

// The statistic over seeds of one number of the evaluations (a JSON pointer).
ojson stat_of(const std::vector<ojson>& evals, const std::string& pointer, double scale = 1) {
  std::vector<double> v;
  const ojson::json_pointer p(pointer);
  for (const ojson& e : evals)
    v.push_back(e.contains(p) && e[p].is_number() ? e[p].get<double>() * scale : NAN);
  return values_stat(v);
}

std::string cell(const ojson& s, int digits = 3) {
  return s.is_null() ? "-" : stat_format(s, digits);
}

// A forgetting metric of the evaluations: "n/a" where the recalled set was empty (the metric is
// undefined there), "-" where it was not measured.
std::string forgetting_cell(const std::vector<ojson>& evals, const std::string& key) {
  return stat_format_recalled(stat_of(evals, "/forgetting/" + key),
                              stat_of(evals, "/forgetting/samples"));
}

// ----------------------------------------------------------------------------
// the table

// The rows of the table (its head is in the template ct_ders.md).
std::string table_rows(const std::vector<Variant>& vs, const std::string& original,
                       const std::string& fresh) {
  std::string md;
  for (const Variant& v : vs) {
    const auto& e = v.evals;
    std::vector<double> rss;
    for (const ojson& r : v.res)
      rss.push_back(r.is_object() ? r.value("peak_rss_bytes", NAN) / 1e6 : NAN);
    const ojson cosd = stat_of(e, "/cosine/to_dense_mean"),
                cosm = stat_of(e, "/cosine/to_dense_min");
    md += fmt::format(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        v.name, v.what,
        v.trained ? human_count(v.method.value("params_trainable", 0.0)) : "- (not trained)",
        human_count(stat_mean(stat_of(e, "/params"))), cell(stat_of(e, "/expert_bytes", 1e-6), 2),
        cell(stat_of(e, "/model_bytes", 1e-6), 1), cell(stat_of(e, "/file_bytes", 1e-6), 1),
        cell(stat_of(e, "/val_loss/" + fresh)), cell(stat_of(e, "/val_loss/" + original)),
        forgetting_cell(e, "m_ex"), forgetting_cell(e, "m_in"),
        v.trained ? cell(values_stat(rss), 0) : "-", cell(stat_of(e, "/seconds"), 1),
        cosd.is_null() ? "-" : fmt::format("{:.5f} / {:.5f}", stat_mean(cosd), stat_mean(cosm)),
        cell(stat_of(e, "/cosine/pairwise_mean"), 5),
        v.trained ? "-" : cell(stat_of(e, "/compress/total/rel_error_mean"), 4));
  }
  return md;
}

// ----------------------------------------------------------------------------
// the figures: quality against the experts' bytes, one curve per family of variants

// "trained sparse", "compressed quant", ...: the variants one curve joins (by bytes).
std::string family(const Variant& v) {
  if (v.trained && v.method.value("kind", "") == "full") return "trained: dense (no upcycling)";
  const std::string spec =
      v.trained ? v.method["method"].value("upcycle", ojson::object()).value("delta", "none")
                : v.method.value("delta", "");
  std::string kind = spec.substr(0, spec.find(':'));
  if (kind == "none") kind = "vanilla";
  if (!v.trained && v.method.value("select", "") == "topk") kind += " top-k";
  return (v.trained ? "trained: " : "compressed: ") + kind;
}

void figure_write(const std::vector<Variant>& vs, const std::string& subset,
                  const std::string& what, Figures& figures) {
  PlotChart c{
      fmt::format("held-out loss on {} ({}) against the routed experts' stored size", subset, what),
      "routed experts, MB as stored", "held-out loss (nats/token)"};
  std::vector<std::string> families;
  for (const Variant& v : vs)
    if (std::find(families.begin(), families.end(), family(v)) == families.end())
      families.push_back(family(v));
  for (size_t i = 0; i < families.size(); i++) {
    std::vector<std::pair<double, double>> pts;
    for (const Variant& v : vs) {
      const double x = stat_mean(stat_of(v.evals, "/expert_bytes", 1e-6));
      const double y = stat_mean(stat_of(v.evals, "/val_loss/" + subset));
      if (family(v) == families[i] && std::isfinite(x) && std::isfinite(y)) pts.push_back({x, y});
    }
    std::sort(pts.begin(), pts.end());
    PlotSeries ps{families[i], {},  {}, {}, {}, families[i].starts_with("trained") ? 1 : 2,
                  int(i) + 1,  true};
    for (const auto& [x, y] : pts) ps.x.push_back(x), ps.y.push_back(y);
    if (!ps.x.empty()) c.series.push_back(std::move(ps));
  }
  figures.draw(c, "ders_bytes_" + subset);
}

// ----------------------------------------------------------------------------
// the reading: what each compression cost against the model it compressed

// Per seed, compression minus its source at the same seed (the same weights but for the
// experts, measured on the same batches and samples): "+0.012 [-0.004, +0.028]" with a 95%
// t-interval where there are two or more seeds, "-" where nothing pairs.
std::string paired(const Variant& v, const Variant& from, const std::string& pointer,
                   double* mean = nullptr) {
  SeedValues compressed, source;
  const ojson::json_pointer p(pointer);
  int64_t seed = 0;
  for (const ojson& e : v.evals) {
    const std::string src = e.value("from", "");
    for (const ojson& f : from.evals)
      if (f.value("checkpoint", "") == src && e.contains(p) && f.contains(p) && e[p].is_number() &&
          f[p].is_number()) {
        compressed[seed] = e[p].get<double>();
        source[seed++] = f[p].get<double>();
      }
  }
  const PairedDiff d = stat_paired(compressed, source);
  if (mean) {
    *mean = d.diff.mean;
  }
  return d.diff.n == 0 ? "-" : stat_diff_format(d.diff.mean, d.diff.ci95);
}

std::string reading_write(const std::vector<Variant>& vs, const std::string& original,
                          const std::string& fresh) {
  std::string md, kept, cost;
  for (const Variant& v : vs) {
    if (v.trained) continue;
    const std::string from_name = v.method.value("from", "");
    auto f = std::find_if(vs.begin(), vs.end(),
                          [&](const Variant& x) { return x.trained && x.name == from_name; });
    if (f == vs.end()) continue;
    double new_mean = NAN;
    const std::string dn = paired(v, *f, "/val_loss/" + fresh, &new_mean);
    const std::string dor = paired(v, *f, "/val_loss/" + original);
    const std::string dex = paired(v, *f, "/forgetting/m_ex");
    const double bytes = stat_mean(stat_of(v.evals, "/expert_bytes")) /
                         stat_mean(stat_of(f->evals, "/expert_bytes"));
    md += fmt::format(
        "- {} ({}, {:.0f}% of the experts' bytes): held-out loss on {} {}, on {} {}, M_ex {} "
        "against {}'s final model.\n",
        v.name, v.method.value("delta", ""), 100 * bytes, fresh, dn, original, dor, dex, from_name);
    if (!std::isfinite(new_mean)) continue;
    std::string& to = std::abs(new_mean) <= 0.01 ? kept : cost;
    to += (to.empty() ? "" : ", ") + v.name;
  }
  if (md.empty()) {
    return "";
  }
  auto list = [](const std::string& s) { return s.empty() ? std::string("none") : s; };
  return template_render("ct_ders_cost.md", {{"lines", md},
                                             {"new", fresh},
                                             {"original", original},
                                             {"kept", list(kept)},
                                             {"cost", list(cost)}});
}

// ----------------------------------------------------------------------------
// the baseline that decides: each upcycled variant against dense training, and DeRS against
// vanilla upcycling

// a minus b over the seeds both ran, on one number of their final evaluations.
PairedDiff trained_paired(const Variant& a, const Variant& b, const std::string& pointer) {
  const ojson::json_pointer p(pointer);
  auto values = [&](const Variant& v) {
    SeedValues out;
    for (size_t i = 0; i < v.evals.size(); i++) {
      if (v.evals[i].contains(p) && v.evals[i][p].is_number()) {
        out[v.seeds[i]] = v.evals[i][p].get<double>();
      }
    }
    return out;
  };
  return stat_paired(values(a), values(b));
}

std::string diff_text(const PairedDiff& d) {
  return d.diff.n == 0 ? "-" : stat_diff_format(d.diff.mean, d.diff.ci95);
}

// One sentence on a paired difference of held-out loss: a direction only where the interval
// excludes zero.
std::string verdict(const PairedDiff& d, const std::string& a, const std::string& b) {
  if (d.diff.n < 2) {
    return fmt::format("{} against {}: one seed, no interval.", a, b);
  }
  if (!d.resolved()) {
    return fmt::format(
        "not resolved: {} minus {} is {} over {} seeds{}.", a, b, diff_text(d), d.diff.n,
        d.seeds_needed > 0 ? fmt::format(" (this spread would need about {} seeds)", d.seeds_needed)
                           : "");
  }
  return fmt::format("{} is {} than {}: {} over {} seeds.", a,
                     d.diff.mean < 0 ? "lower (better)" : "higher (worse)", b, diff_text(d),
                     d.diff.n);
}

bool is_kind(const Variant& v, const char* kind) {
  return v.trained && v.method.value("kind", "") == kind;
}

bool is_vanilla(const Variant& v) {
  return is_kind(v, "upcycle") &&
         v.method["method"].value("upcycle", ojson::object()).value("delta", "none") == "none";
}

std::string baseline_write(const std::vector<Variant>& vs, const std::string& original,
                           const std::string& fresh) {
  const auto dense =
      std::find_if(vs.begin(), vs.end(), [](const Variant& v) { return is_kind(v, "full"); });
  const auto vanilla = std::find_if(vs.begin(), vs.end(), is_vanilla);
  if (dense == vs.end()) {
    return "";
  }
  const std::string pf = "/val_loss/" + fresh, po = "/val_loss/" + original;
  std::string lines, ders;
  for (const Variant& v : vs) {
    if (!is_kind(v, "upcycle")) {
      continue;
    }
    std::string line =
        fmt::format("- {} ({}; {} trainable, experts {} MB): {} {}, {} {} against {}", v.name,
                    v.what, human_count(v.method.value("params_trainable", 0.0)),
                    cell(stat_of(v.evals, "/expert_bytes", 1e-6), 2), fresh,
                    diff_text(trained_paired(v, *dense, pf)), original,
                    diff_text(trained_paired(v, *dense, po)), dense->name);
    if (vanilla != vs.end() && &v != &*vanilla) {
      const double share = stat_mean(stat_of(v.evals, "/expert_bytes")) /
                           stat_mean(stat_of(vanilla->evals, "/expert_bytes"));
      const PairedDiff dv = trained_paired(v, *vanilla, pf);
      line += fmt::format("; {} {}, {} {} against {} at {:.0f}% of its experts' bytes", fresh,
                          diff_text(dv), original, diff_text(trained_paired(v, *vanilla, po)),
                          vanilla->name, 100 * share);
      ders += fmt::format("{}{} ({:.0f}% of the bytes): {}", ders.empty() ? "" : " ", v.name,
                          100 * share, verdict(dv, v.name, vanilla->name));
    }
    lines += line + ".\n";
  }
  if (lines.empty()) {
    return "";
  }
  const std::string upcycling = vanilla == vs.end() ? "no vanilla upcycling in this study."
                                                    : verdict(trained_paired(*vanilla, *dense, pf),
                                                              vanilla->name, dense->name);
  return template_render("ct_ders_dense.md",
                         {{"dense", dense->name},
                          {"vanilla", vanilla == vs.end() ? "-" : vanilla->name},
                          {"new", fresh},
                          {"lines", lines},
                          {"upcycling", upcycling},
                          {"ders", ders.empty() ? "no DeRS variant trained." : ders}});
}

// The experts' cosine to the dense FFN over training, per trained upcycled variant: the mean
// over seeds at each logged step, with the seeds' range as a band.
void cosine_figure_write(const std::vector<Variant>& vs, Figures& figures) {
  PlotChart c{"the experts' cosine to the dense FFN over training (mean over seeds, range)", "step",
              "cos(expert, dense FFN)"};
  int color = 0;
  for (const Variant& v : vs) {
    if (!is_kind(v, "upcycle")) {
      continue;
    }
    std::map<int64_t, std::vector<double>> by_step;
    for (const std::string& d : v.dirs) {
      const RunData r = run_read(d);
      if (const auto it = r.s.find("cos_dense"); it != r.s.end()) {
        for (const auto& [step, cos] : it->second) {
          by_step[step].push_back(cos);
        }
      }
    }
    PlotSeries ps{v.name};
    ps.color = color++;
    for (const auto& [step, vals] : by_step) {
      double sum = 0;
      for (double x : vals) sum += x;
      ps.x.push_back(double(step));
      ps.y.push_back(sum / double(vals.size()));
      ps.lo.push_back(*std::min_element(vals.begin(), vals.end()));
      ps.hi.push_back(*std::max_element(vals.begin(), vals.end()));
    }
    if (!ps.x.empty()) {
      c.series.push_back(std::move(ps));
    }
  }
  if (!c.series.empty()) {
    figures.draw(c, "ders_cosine");
  }
}

}  // namespace

DersSection ct_report_ders(const std::string& dir, const ojson& ct, const std::string& out,
                           bool plots) {
  DersSection s;
  const std::vector<Variant> vs = variants_read(dir, ct);
  if (vs.empty()) return s;
  const std::string original = ct.value("original", ""), fresh = ct.value("new", "");
  s.md = template_render(
      "ct_ders.md",
      {{"new", fresh}, {"original", original}, {"rows", table_rows(vs, original, fresh)}});
  std::string none;  // the variants whose recalled set was empty
  for (const Variant& v : vs) {
    if (recalled_none(stat_of(v.evals, "/forgetting/samples"))) {
      none += (none.empty() ? "" : ", ") + v.name;
    }
  }
  if (!none.empty()) {
    s.md += template_render("ct_ders_na.md", {{"variants", none}});
  }
  s.md += reading_write(vs, original, fresh);
  s.md += baseline_write(vs, original, fresh);
  Figures figures{out, plots, {}};
  cosine_figure_write(vs, figures);
  figure_write(vs, fresh, "new domain", figures);
  figure_write(vs, original, "original domain", figures);
  s.figures = figures.stems;
  for (const Variant& v : vs) {
    ojson j = {{"variant", v.name}, {"what", v.what}, {"trained", v.trained}};
    for (const char* p :
         {"/params", "/expert_bytes", "/model_bytes", "/file_bytes", "/forgetting/m_ex",
          "/forgetting/m_in", "/peak_rss_bytes", "/seconds", "/cosine/to_dense_mean",
          "/cosine/pairwise_mean", "/compress/total/rel_error_mean"})
      j[std::string(p).substr(1)] = stat_of(v.evals, p);
    for (const std::string& sub : {fresh, original})
      j["val_loss_" + sub] = stat_of(v.evals, "/val_loss/" + sub);
    s.summary.push_back(j);
  }
  return s;
}

}  // namespace moelab
