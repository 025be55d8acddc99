#pragma once
// What every study report is made of (the forgetting study's, ct's with its DeRS part, fit's):
// statistics over seeds and their formatting, markdown tables with one column per model, the
// fixed prose and gnuplot text as templates (src/study/templates, embedded in the binary),
// figures (a chart -> a self-contained gnuplot script with its data inline -> PNG and SVG, so a
// figure can be restyled by editing and re-running its script), and the report's two files.
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "study/failure.hpp"

namespace moelab {

using ojson = nlohmann::ordered_json;

// ----------------------------------------------------------------------------
// statistics over seeds

// One number per run, summarised: null (none finite), the value (one), or {mean, sd, n, ci95}
// (study/stats.hpp: the 95% t-interval of the mean).
ojson values_stat(std::vector<double> v);
double stat_mean(const ojson& v);                         // NaN for null
std::string stat_format(const ojson& v, int digits = 3);  // "x" or "x ± sd"; "-" for null
// Whether a statistic of the samples kept (M_ex = 1) says the model recalled none: every
// forgetting metric is then undefined ("n/a" in tables, null in JSON).
bool recalled_none(const ojson& kept);
// stat_format, or "n/a" where the recalled set was empty.
std::string stat_format_recalled(const ojson& v, const ojson& kept, int digits = 3);
std::string human_count(double n);  // 3.88M, 12.5k
// "[1,2] (n = 2; [3] failed)", or "[1,2]" when none failed.
std::string seeds_cell(const ojson& seeds, const std::string& failed, size_t failed_count);
// A failure record as summary.json lists it, after the keys `head` names the run with.
ojson failure_json(ojson head, const RunFailure& f);

// ----------------------------------------------------------------------------
// markdown

// "a, b, c" (with `sep` between).
std::string list_join(const std::vector<std::string>& items, const std::string& sep = ", ");

// A table with one column per entry of `columns` (headed by `head` of each), a row per row().
class MdColumns {
 public:
  MdColumns(const ojson& columns, const std::function<std::string(const ojson&)>& head);
  void row(const std::string& name, const std::function<std::string(const ojson&)>& cell);
  // A row of the statistic `key` (stat_format), of a count (human_count of its mean), of a
  // forgetting metric ("n/a" where the column's evalset_kept says nothing was recalled), and of
  // the recalled samples against the candidates.
  void row_stat(const std::string& name, const std::string& key, int digits = 3);
  void row_count(const std::string& name, const std::string& key);
  void row_recalled(const std::string& name, const std::string& key, int digits = 3);
  void row_kept(const std::string& name);
  const std::string& md() const { return md_; }

 private:
  const ojson& columns_;
  std::string md_;
};

// ----------------------------------------------------------------------------
// templates: the reports' fixed prose and gnuplot scripts, src/study/templates/NAME.in, embedded
// in the binary at build time (CMakeLists.txt), so a report needs no file beside the binary

using TemplateValues = std::map<std::string, std::string, std::less<>>;
// `text` with each {{key}} replaced by its value; fails naming template `name` and the key when
// a value is missing.
std::string template_fill(std::string_view name, std::string_view text,
                          const TemplateValues& values);
// The embedded template NAME (its file name without .in), filled.
std::string template_render(std::string_view name, const TemplateValues& values = {});
// Every embedded template, name and text (generated from src/study/templates).
std::span<const std::pair<std::string_view, std::string_view>> template_table();

// ----------------------------------------------------------------------------
// figures

struct PlotSeries {
  std::string title;
  std::vector<double> x, y;
  std::vector<double> lo, hi;  // optional band (seed spread), same length as x
  int dash = 1;                // gnuplot dash type: 1 solid, 2 dashed, 3 dotted
  int color = 0;               // index into the palette; series of one model share it
  bool points = false;         // mark every point (a curve through measurements in x and y)
  bool scatter = false;        // the points alone, no line (repeated or unordered measurements)
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

// The figures of one report, drawn into one folder in the order the report lists them.
struct Figures {
  std::string out;
  bool plots = true;  // false: the scripts only
  std::vector<std::string> stems;
  void draw(const PlotChart& chart, const std::string& stem);
};

// ----------------------------------------------------------------------------
// the report's files

// The markdown images of the figures' PNGs, one paragraph each.
std::string md_images(const std::vector<std::string>& stems);
// OUT/summary.json and OUT/summary.md (atomic), the line "report: OUT/summary.md" on stderr.
// Returns the summary's path.
std::string report_files_write(const std::string& out, const std::string& md, const ojson& summary);
// A JSON file, or null where it is missing or unreadable.
ojson json_file_or_null(const std::string& path);

}  // namespace moelab
