#pragma once
// Line charts through gnuplot: each chart is one self-contained script (data inline) that draws
// STEM.png and STEM.svg, so a figure can be restyled by editing and re-running its script.
#include <optional>
#include <string>
#include <vector>

namespace moelab {

struct PlotSeries {
  std::string title;
  std::vector<double> x, y;
  std::vector<double> lo, hi;  // optional band (seed spread), same length as x
  int dash = 1;                // gnuplot dash type: 1 solid, 2 dashed, 3 dotted
  int color = 0;               // index into the palette; series of one model share it
  bool points = false;         // mark every point (a curve through measurements in x and y)
};

struct PlotChart {
  std::string title, xlabel, ylabel;
  std::vector<PlotSeries> series;
  std::optional<double> marker_x;  // a vertical line (the A -> B switch)
  std::string marker_label;
  std::optional<double> ymin, ymax;
  bool logy = false;
};

// Writes STEM.gp; runs gnuplot on it when `run` (false: the script only). Returns false with a
// warning line on stderr if gnuplot is missing or fails, so a report still gets its tables.
bool plot_write(const PlotChart& chart, const std::string& stem, bool run = true);

}  // namespace moelab
