#include "study/report_kit.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/signals.hpp"
#include "study/stats.hpp"

namespace moelab {

namespace fs = std::filesystem;

// ----------------------------------------------------------------------------
// statistics over seeds

ojson values_stat(std::vector<double> v) {
  const SeedStat s = stat_seeds(v);
  if (s.n == 0) {
    return nullptr;
  }
  if (s.n == 1) {
    return s.mean;
  }
  return ojson{{"mean", s.mean}, {"sd", s.sd}, {"n", s.n}, {"ci95", {s.ci95.lo, s.ci95.hi}}};
}

double stat_mean(const ojson& v) {
  if (v.is_null()) return NAN;
  return v.is_number() ? v.get<double>() : v["mean"].get<double>();
}

std::string stat_format(const ojson& v, int digits) {
  if (v.is_null()) return "-";
  if (v.is_number() || v["sd"].get<double>() == 0)
    return fmt::format("{:.{}f}", stat_mean(v), digits);
  return fmt::format("{:.{}f} ± {:.{}f}", v["mean"].get<double>(), digits, v["sd"].get<double>(),
                     digits);
}

bool recalled_none(const ojson& kept) {
  return !kept.is_null() && stat_mean(kept) == 0 && (!kept.is_object() || kept["sd"] == 0);
}

std::string stat_format_recalled(const ojson& v, const ojson& kept, int digits) {
  return v.is_null() && recalled_none(kept) ? "n/a" : stat_format(v, digits);
}

std::string human_count(double n) {
  if (n >= 1e9) return fmt::format("{:.2f}B", n / 1e9);
  if (n >= 1e6) return fmt::format("{:.2f}M", n / 1e6);
  if (n >= 1e3) return fmt::format("{:.1f}k", n / 1e3);
  return fmt::format("{:.0f}", n);
}

std::string seeds_cell(const ojson& seeds, const std::string& failed, size_t failed_count) {
  if (failed_count == 0) {
    return seeds.dump();
  }
  return fmt::format("{} (n = {}; {} failed)", seeds.dump(), seeds.size(), failed);
}

ojson failure_json(ojson head, const RunFailure& f) {
  head.update(ojson{{"step", f.step},
                    {"total_steps", f.total},
                    {"nonfinite", f.nonfinite},
                    {"reason", f.reason}});
  return head;
}

// ----------------------------------------------------------------------------
// markdown

std::string list_join(const std::vector<std::string>& items, const std::string& sep) {
  std::string s;
  for (const std::string& x : items) {
    s += (s.empty() ? "" : sep) + x;
  }
  return s;
}

MdColumns::MdColumns(const ojson& columns, const std::function<std::string(const ojson&)>& head)
    : columns_(columns) {
  md_ = "| | ";
  for (const ojson& c : columns_) {
    md_ += head(c) + " | ";
  }
  md_ += "\n|---|";
  for (size_t i = 0; i < columns_.size(); i++) {
    md_ += "---|";
  }
  md_ += "\n";
}

void MdColumns::row(const std::string& name, const std::function<std::string(const ojson&)>& cell) {
  md_ += "| " + name + " | ";
  for (const ojson& c : columns_) {
    md_ += cell(c) + " | ";
  }
  md_ += "\n";
}

void MdColumns::row_stat(const std::string& name, const std::string& key, int digits) {
  row(name, [&](const ojson& m) { return stat_format(m[key], digits); });
}

void MdColumns::row_count(const std::string& name, const std::string& key) {
  row(name, [&](const ojson& m) { return human_count(stat_mean(m[key])); });
}

void MdColumns::row_recalled(const std::string& name, const std::string& key, int digits) {
  row(name,
      [&](const ojson& m) { return stat_format_recalled(m[key], m["evalset_kept"], digits); });
}

void MdColumns::row_kept(const std::string& name) {
  row(name, [](const ojson& m) {
    return fmt::format("{} of {}", stat_format(m["evalset_kept"], 0),
                       stat_format(m["evalset_candidates"], 0));
  });
}

// ----------------------------------------------------------------------------
// templates

std::string template_fill(std::string_view name, std::string_view text,
                          const TemplateValues& values) {
  std::string out;
  size_t at = 0;
  for (size_t open = text.find("{{"); open != std::string_view::npos; open = text.find("{{", at)) {
    const size_t close = text.find("}}", open);
    if (close == std::string_view::npos) {
      fail(fmt::format("template {}: '{{{{' without '}}}}'", name));
    }
    const std::string_view key = text.substr(open + 2, close - open - 2);
    const auto value = values.find(key);
    if (value == values.end()) {
      fail(fmt::format("template {}: no value for {{{{{}}}}}", name, key));
    }
    out.append(text.substr(at, open - at)).append(value->second);
    at = close + 2;
  }
  return out.append(text.substr(at));
}

std::string template_render(std::string_view name, const TemplateValues& values) {
  for (const auto& [n, text] : template_table()) {
    if (n == name) {
      return template_fill(name, text, values);
    }
  }
  fail(fmt::format("template {}: not among the embedded templates (src/study/templates)", name));
}

// ----------------------------------------------------------------------------
// figures

namespace {

// Colour-blind-safe (Okabe-Ito), in the order models are listed.
constexpr const char* kPalette[] = {"#000000", "#E69F00", "#0072B2", "#009E73",
                                    "#D55E00", "#CC79A7", "#56B4E9", "#F0E442"};

std::string quote(const std::string& s) {
  std::string q = "\"";
  for (char c : s) q += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
  return q + "\"";
}

}  // namespace

bool plot_write(const PlotChart& c, const std::string& stem, bool run) {
  const std::string name = std::filesystem::path(stem).filename().string();
  std::string data, plots;
  for (size_t i = 0; i < c.series.size(); i++) {
    const PlotSeries& s = c.series[i];
    const bool band = s.lo.size() == s.x.size() && s.hi.size() == s.x.size();
    data += fmt::format("$s{} << EOD\n", i);
    for (size_t j = 0; j < s.x.size(); j++) {
      data += band ? fmt::format("{} {} {} {}\n", s.x[j], s.y[j], s.lo[j], s.hi[j])
                   : fmt::format("{} {}\n", s.x[j], s.y[j]);
    }
    data += "EOD\n";
    const char* col = kPalette[size_t(s.color) % std::size(kPalette)];
    if (s.lo.size() == s.x.size() && !s.x.empty()) {
      plots += fmt::format(
          "$s{} using 1:3:4 with filledcurves fs transparent solid 0.18 noborder "
          "lc rgb '{}' notitle, ",
          i, col);
    }
    const char* with = s.x.size() == 1 || s.scatter ? "points pt 7 ps 0.8"
                       : s.points                   ? "linespoints pt 7 ps 0.7"
                                                    : "lines";
    plots += fmt::format("$s{} using 1:2 with {} lw 2 dt {} lc rgb '{}' title {}, ", i, with,
                         s.dash, col, quote(s.title));
  }
  plots = plots.empty() ? "NaN notitle" : plots.substr(0, plots.size() - 2);
  const auto bound = [](std::optional<double> v) { return v ? fmt::format("{}", *v) : "*"; };
  const std::string marker =
      c.marker_x ? template_render("plot_marker.gp", {{"x", fmt::format("{}", *c.marker_x)},
                                                      {"label", quote(c.marker_label)}})
                 : "";
  const std::string g = template_render("plot.gp", {{"title", c.title},
                                                    {"name", name},
                                                    {"data", data},
                                                    {"title_quoted", quote(c.title)},
                                                    {"xlabel", quote(c.xlabel)},
                                                    {"ylabel", quote(c.ylabel)},
                                                    {"logscale", c.logy ? "set logscale y\n" : ""},
                                                    {"ymin", bound(c.ymin)},
                                                    {"ymax", bound(c.ymax)},
                                                    {"marker", marker},
                                                    {"png", quote(name + ".png")},
                                                    {"svg", quote(name + ".svg")},
                                                    {"plots", plots}});
  file_write_atomic(stem + ".gp", g);
  if (!run) return true;
  const std::string dir = std::filesystem::path(stem).parent_path().string();
  const std::string cmd =
      fmt::format("cd '{}' && gnuplot '{}.gp' 2>&1", dir.empty() ? "." : dir, name);
  const SignalsUnblocked child_signals;
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  if (p) {
    char buf[512];
    while (std::fgets(buf, sizeof buf, p)) out += buf;
  }
  const int rc = p ? pclose(p) : -1;
  if (rc != 0) {
    std::fprintf(stderr,
                 "warning: %s.gp: gnuplot failed or is missing (apt-get install gnuplot-nox)%s%s",
                 stem.c_str(), out.empty() ? "" : ": ", out.empty() ? "\n" : out.c_str());
    return false;
  }
  return true;
}

void Figures::draw(const PlotChart& chart, const std::string& stem) {
  plot_write(chart, (fs::path(out) / stem).string(), plots);
  stems.push_back(stem);
}

// ----------------------------------------------------------------------------
// the report's files

std::string md_images(const std::vector<std::string>& stems) {
  std::string md;
  for (const std::string& f : stems) {
    md += fmt::format("![{0}]({0}.png)\n\n", f);
  }
  return md;
}

std::string report_files_write(const std::string& out, const std::string& md,
                               const ojson& summary) {
  file_write_atomic((fs::path(out) / "summary.json").string(), summary.dump(2) + "\n");
  const std::string md_path = (fs::path(out) / "summary.md").string();
  file_write_atomic(md_path, md);
  std::fprintf(stderr, "report: %s\n", md_path.c_str());
  return md_path;
}

ojson json_file_or_null(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    return nullptr;
  }
  const ojson j = ojson::parse(file_read(path), nullptr, false);
  return j.is_discarded() ? ojson() : j;
}

}  // namespace moelab
