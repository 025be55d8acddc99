#include "study/plot.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "core/fileio.hpp"
#include "core/signals.hpp"

namespace moelab {

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
  std::string g = "# " + c.title + " (moelab report; run: gnuplot " + name + ".gp)\n";
  for (size_t i = 0; i < c.series.size(); i++) {
    const PlotSeries& s = c.series[i];
    g += fmt::format("$s{} << EOD\n", i);
    const bool band = s.lo.size() == s.x.size() && s.hi.size() == s.x.size();
    for (size_t j = 0; j < s.x.size(); j++)
      g += band ? fmt::format("{} {} {} {}\n", s.x[j], s.y[j], s.lo[j], s.hi[j])
                : fmt::format("{} {}\n", s.x[j], s.y[j]);
    g += "EOD\n";
  }
  g += "set title " + quote(c.title) + " noenhanced\n";
  g += "set xlabel " + quote(c.xlabel) + " noenhanced\nset ylabel " + quote(c.ylabel) +
       " noenhanced\n";
  g += "set key outside right top noenhanced\nset grid lc rgb '#dddddd'\nset border 3\n"
       "set tics nomirror\n";
  if (c.logy) g += "set logscale y\n";
  g += fmt::format("set yrange [{}:{}]\n", c.ymin ? fmt::format("{}", *c.ymin) : "*",
                   c.ymax ? fmt::format("{}", *c.ymax) : "*");
  if (c.marker_x) {
    g += fmt::format("set arrow from {0}, graph 0 to {0}, graph 1 nohead dt 2 lc rgb '#888888'\n",
                     *c.marker_x);
    g += fmt::format("set label {} at {}, graph 1.03 center noenhanced tc rgb '#555555'\n",
                     quote(c.marker_label), *c.marker_x);
  }
  std::string plots;
  for (size_t i = 0; i < c.series.size(); i++) {
    const PlotSeries& s = c.series[i];
    const char* col = kPalette[size_t(s.color) % std::size(kPalette)];
    if (s.lo.size() == s.x.size() && !s.x.empty())
      plots += fmt::format(
          "$s{} using 1:3:4 with filledcurves fs transparent solid 0.18 noborder "
          "lc rgb '{}' notitle, ",
          i, col);
    const char* with = s.x.size() == 1 ? "points pt 7"
                       : s.points      ? "linespoints pt 7 ps 0.7"
                                       : "lines";
    plots += fmt::format("$s{} using 1:2 with {} lw 2 dt {} lc rgb '{}' title {}, ", i, with,
                         s.dash, col, quote(s.title));
  }
  if (!plots.empty()) plots.resize(plots.size() - 2);
  for (const char* term : {"pngcairo size 1000,560 font 'sans,11'", "svg size 1000,560"}) {
    const bool png = term[0] == 'p';
    g += fmt::format("set terminal {}\nset output {}\nplot {}\nunset output\n", term,
                     quote(name + (png ? ".png" : ".svg")), plots.empty() ? "NaN notitle" : plots);
  }
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

}  // namespace moelab
