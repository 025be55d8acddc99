#pragma once
// The parts of the HTML view (docs/view.md): escaping, line charts and heat maps drawn as inline
// SVG, and the page around them with its self-refresh. Everything a page shows is inside the
// file (no script, style, font or image is fetched), so it works from file:// without a server.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moelab {

// Text for HTML element content and attribute values: & < > " ' escaped.
std::string html_escape(std::string_view text);

// One curve of a chart: points (x_values[i], y_values[i]); non-finite y values break the line.
struct HtmlSeries {
  std::string name;
  std::vector<double> x_values, y_values;  // [point]
  bool dashed = false;
};

struct HtmlChart {
  std::string title, xlabel, ylabel;
  std::vector<HtmlSeries> series;
  std::vector<double> markers;  // vertical lines (phase switches)
  bool logy = false;
  std::optional<double> ymin, ymax;
};

// The chart as a <figure>: its title, an <svg> (axes, ticks, the curves in the palette's order,
// each with its name as a tooltip) and the legend. A chart without finite points says so.
std::string html_render_chart(const HtmlChart& c);

// The ticks of a linear axis over [lo, hi]: 1, 2 or 5 times a power of ten, about `count` of
// them, never more than 50. An empty, inverted or non-finite range, or one too narrow for its
// values' resolution (a few ulps), gives {lo}.
std::vector<double> html_ticks_linear(double lo, double hi, int count);

// A heat map of values[row][col] (e.g. expert load per layer and expert), shaded from 0 to
// `full` (and beyond: the darkest shade); each cell's tooltip gives row, column and value.
struct HtmlHeatmap {
  std::string title, row_label, col_label, note;
  std::vector<std::vector<double>> values;
  double full = 1;
};
std::string html_render_heatmap(const HtmlHeatmap& h);

// A whole page: the title, the common style, `body`, and, where refresh_s > 0, a meta refresh
// every refresh_s seconds plus a line that says how old the page is and warns when it stopped
// being rewritten (written_unix: when this version was written, seconds since 1970).
struct HtmlPage {
  std::string title;
  std::string body;
  int64_t refresh_s = 0;
  double written_unix = 0;
};
std::string html_render_page(const HtmlPage& p);

// The current time in seconds since 1970, and the UTC time "2026-12-07 06:14:03 UTC".
double html_now_unix();
std::string html_format_utc(double unix_s);
// "1 h 02 min", "4 min 10 s", "12 s"; "-" for a negative or non-finite value.
std::string html_format_duration(double seconds);
// A number for a table cell or banner: 4 significant digits, "-" when not finite.
std::string html_format_number(double v);
// A count: "3.88M", "40.0k", "512"; "-" when not finite.
std::string html_format_count(double v);

}  // namespace moelab
