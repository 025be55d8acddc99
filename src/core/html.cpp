#include "core/html.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>

namespace moelab {

namespace {

// Colour-blind-safe categorical palette (Okabe-Ito, then Tableau's greys and browns).
constexpr const char* kPalette[] = {"#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00",
                                    "#56b4e9", "#000000", "#8c564b", "#7f7f7f", "#bcbd22"};
constexpr size_t kPaletteSize = sizeof(kPalette) / sizeof(kPalette[0]);

// The SVG's coordinate box and the plot area inside it (the axes' labels around it).
constexpr double kWidth = 640, kHeight = 300;
constexpr double kLeft = 64, kRight = 628, kTop = 12, kBottom = 256;
// Curves of more points are thinned to the extremes of this many buckets (a spike stays).
constexpr size_t kMaxPoints = 1200;
// An axis never has more ticks than this, whatever its range.
constexpr int64_t kMaxTicks = 50;

struct Range {
  double lo = INFINITY, hi = -INFINITY;
  void add(double v) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  bool empty() const { return !(lo <= hi); }
};

// A range at least a few parts in 1e9 of its magnitude wide: a flat curve, one point, or a span
// of a few ulps gets a window around its middle (the scale and the ticks need a real width).
void range_widen(Range& r, double half_width) {
  const double mid = r.lo / 2 + r.hi / 2;
  if (std::isfinite(mid) && !(r.hi - r.lo > std::abs(mid) * 1e-9)) {
    const double half = std::max(std::abs(mid) * 0.05, half_width);
    r.lo = mid - half;
    r.hi = mid + half;
  }
}

}  // namespace

std::vector<double> html_ticks_linear(double lo, double hi, int count) {
  const double raw = (hi - lo) / std::max(count, 1);
  if (!std::isfinite(lo) || !std::isfinite(hi) || !(raw > 0) || !std::isfinite(raw)) {
    return {lo};
  }
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  double step = p;
  for (const double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * p;
    if (step >= raw) {
      break;
    }
  }
  const double first = std::ceil(lo / step) * step;
  if (!(step > 0) || !std::isfinite(first) || first + step == first) {
    return {lo};  // a step below the values' resolution would never advance
  }
  // Counted, not accumulated: v += step stalls where step is a few ulps of v, and a count
  // bounds the loop whatever the range (a training hook draws these charts).
  std::vector<double> t;
  for (int64_t k = 0; k < kMaxTicks; k++) {
    const double v = first + double(k) * step;
    if (v > hi + step * 1e-9) {
      break;
    }
    t.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
  }
  return t;
}

namespace {

// Ticks of a log axis over [lo, hi] (log10 values): the powers of ten, and 2x and 5x where
// the axis spans less than two decades.
std::vector<double> ticks_log(double lo, double hi) {
  std::vector<double> t;
  if (!std::isfinite(lo) || !std::isfinite(hi) || !(hi >= lo)) {
    return t;
  }
  const bool fine = hi - lo < 2;
  const double first = std::floor(lo);
  // every decade up to a dozen of them; a wider axis labels every second, third, ... one
  const double stride = std::max(1.0, std::ceil((std::ceil(hi) - first) / 12));
  for (int64_t k = 0; k < kMaxTicks && first + double(k) * stride <= std::ceil(hi); k++) {
    for (const double m : {1.0, 2.0, 5.0}) {
      if (m != 1.0 && !fine) {
        continue;
      }
      const double v = first + double(k) * stride + std::log10(m);
      if (v >= lo - 1e-9 && v <= hi + 1e-9) {
        t.push_back(v);
      }
    }
  }
  return t;
}

std::string tick_label(double v) {
  if (v == 0) {
    return "0";
  }
  const double a = std::abs(v);
  if (a >= 1e5 || a < 1e-3) {
    return fmt::format("{:.2g}", v);
  }
  return fmt::format("{:.4g}", v);
}

// The points of a series that the chart draws: y as plotted (log10 on a log axis), thinned to
// each bucket's lowest and highest point.
struct Points {
  std::vector<double> x_values, y_values;  // [point]
};
Points series_points(const HtmlSeries& s, bool logy) {
  Points p;
  const size_t n = std::min(s.x_values.size(), s.y_values.size());
  for (size_t i = 0; i < n; i++) {
    double y = s.y_values[i];
    if (logy) {
      y = y > 0 ? std::log10(y) : NAN;
    }
    p.x_values.push_back(s.x_values[i]);
    p.y_values.push_back(y);
  }
  if (n <= kMaxPoints) {
    return p;
  }
  Points thin;
  const size_t buckets = kMaxPoints / 2;
  for (size_t b = 0; b < buckets; b++) {
    const size_t i0 = b * n / buckets, i1 = (b + 1) * n / buckets;
    size_t lo = i0, hi = i0;
    for (size_t i = i0; i < i1; i++) {
      if (std::isfinite(p.y_values[i]) &&
          (!std::isfinite(p.y_values[lo]) || p.y_values[i] < p.y_values[lo])) {
        lo = i;
      }
      if (std::isfinite(p.y_values[i]) &&
          (!std::isfinite(p.y_values[hi]) || p.y_values[i] > p.y_values[hi])) {
        hi = i;
      }
    }
    for (const size_t i : {std::min(lo, hi), std::max(lo, hi)}) {
      thin.x_values.push_back(p.x_values[i]);
      thin.y_values.push_back(p.y_values[i]);
    }
  }
  return thin;
}

std::string legend_html(const HtmlChart& c) {
  std::string out = "<div class=\"legend\">";
  for (size_t i = 0; i < c.series.size(); i++) {
    out += fmt::format("<span><i style=\"border-color:{}\"{}></i>{}</span>",
                       kPalette[i % kPaletteSize], c.series[i].dashed ? " class=\"dash\"" : "",
                       html_escape(c.series[i].name));
  }
  return out + "</div>";
}

// The axes' frame, grid lines and tick labels.
std::string axes_svg(const HtmlChart& c, const Range& xr, const Range& yr) {
  const auto px = [&](double x) {
    return kLeft + (x - xr.lo) / (xr.hi - xr.lo) * (kRight - kLeft);
  };
  const auto py = [&](double y) {
    return kBottom - (y - yr.lo) / (yr.hi - yr.lo) * (kBottom - kTop);
  };
  std::string out;
  for (const double t : c.logy ? ticks_log(yr.lo, yr.hi) : html_ticks_linear(yr.lo, yr.hi, 5)) {
    out += fmt::format(
        "<line class=\"grid\" x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\"/>"
        "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">{}</text>",
        kLeft, kRight, py(t), py(t), kLeft - 6, py(t) + 4,
        html_escape(tick_label(c.logy ? std::pow(10.0, t) : t)));
  }
  for (const double t : html_ticks_linear(xr.lo, xr.hi, 6)) {
    out += fmt::format(
        "<line class=\"grid\" x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\"/>"
        "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>",
        px(t), px(t), kTop, kBottom, px(t), kBottom + 16, html_escape(tick_label(t)));
  }
  for (const double m : c.markers) {
    if (m > xr.lo && m < xr.hi) {
      out += fmt::format(
          "<line class=\"marker\" x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\"/>", px(m),
          px(m), kTop, kBottom);
    }
  }
  out += fmt::format(
      "<rect class=\"frame\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/>"
      "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>"
      "<text transform=\"translate(14,{:.1f}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
      kLeft, kTop, kRight - kLeft, kBottom - kTop, (kLeft + kRight) / 2, kHeight - 8,
      html_escape(c.xlabel), (kTop + kBottom) / 2, html_escape(c.ylabel));
  return out;
}

}  // namespace

std::string html_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char ch : text) {
    switch (ch) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += ch;
    }
  }
  return out;
}

std::string html_render_chart(const HtmlChart& c) {
  std::vector<Points> pts;
  Range xr, yr;
  for (const HtmlSeries& s : c.series) {
    pts.push_back(series_points(s, c.logy));
    for (size_t i = 0; i < pts.back().x_values.size(); i++) {
      if (std::isfinite(pts.back().y_values[i]) && std::isfinite(pts.back().x_values[i])) {
        xr.add(pts.back().x_values[i]);
        yr.add(pts.back().y_values[i]);
      }
    }
  }
  std::string out = fmt::format("<figure><figcaption>{}</figcaption>", html_escape(c.title));
  if (xr.empty()) {
    return out + "<p class=\"empty\">nothing logged yet</p></figure>";
  }
  if (c.ymin) {
    yr.lo = c.logy ? std::log10(*c.ymin) : *c.ymin;
  }
  if (c.ymax) {
    yr.hi = c.logy ? std::log10(*c.ymax) : *c.ymax;
  }
  const double pad = yr.hi > yr.lo ? (yr.hi - yr.lo) * 0.04 : std::max(std::abs(yr.lo) * 0.05, 0.5);
  yr.lo -= c.ymin ? 0.0 : pad;
  yr.hi += c.ymax ? 0.0 : pad;
  // flat within its resolution, or a ymin/ymax that leaves no room (ymin >= ymax)
  range_widen(yr, 0.5);
  range_widen(xr, 0.5);
  out += fmt::format(
      "<svg viewBox=\"0 0 {} {}\" role=\"img\" aria-label=\"{}\" xmlns=\"http://www.w3.org/2000/"
      "svg\">",
      kWidth, kHeight, html_escape(c.title));
  out += axes_svg(c, xr, yr);
  const auto px = [&](double x) {
    return kLeft + (x - xr.lo) / (xr.hi - xr.lo) * (kRight - kLeft);
  };
  const auto py = [&](double y) {
    return kBottom - (std::clamp(y, yr.lo, yr.hi) - yr.lo) / (yr.hi - yr.lo) * (kBottom - kTop);
  };
  for (size_t k = 0; k < pts.size(); k++) {
    std::string d;
    bool pen = false;
    size_t drawn = 0;
    double last_x = 0, last_y = 0;
    for (size_t i = 0; i < pts[k].x_values.size(); i++) {
      if (!std::isfinite(pts[k].y_values[i]) || !std::isfinite(pts[k].x_values[i])) {
        pen = false;
        continue;
      }
      last_x = px(pts[k].x_values[i]);
      last_y = py(pts[k].y_values[i]);
      d += fmt::format("{}{:.1f} {:.1f}", pen ? " L" : " M", last_x, last_y);
      pen = true;
      drawn++;
    }
    const char* color = kPalette[k % kPaletteSize];
    if (drawn == 1) {  // a single point: a dot (a path of one point draws nothing)
      out += fmt::format(
          "<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"><title>{}</title></circle>",
          last_x, last_y, color, html_escape(c.series[k].name));
    } else if (drawn > 1) {
      out += fmt::format(
          "<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\"{}><title>{}</title>"
          "</path>",
          d.substr(1), color, c.series[k].dashed ? " stroke-dasharray=\"6 4\"" : "",
          html_escape(c.series[k].name));
    }
  }
  return out + "</svg>" + legend_html(c) + "</figure>";
}

std::string html_render_heatmap(const HtmlHeatmap& h) {
  std::string out = fmt::format("<figure><figcaption>{}</figcaption>", html_escape(h.title));
  size_t cols = 0;
  for (const auto& row : h.values) {
    cols = std::max(cols, row.size());
  }
  if (h.values.empty() || cols == 0) {
    return out + "<p class=\"empty\">nothing logged yet</p></figure>";
  }
  const double label = 64, cell_w = std::clamp(560.0 / double(cols), 6.0, 48.0), cell_h = 20;
  const double width = label + cell_w * double(cols) + 8;
  const double height = cell_h * double(h.values.size()) + 40;
  out += fmt::format(
      "<svg class=\"heat\" viewBox=\"0 0 {:.0f} {:.0f}\" style=\"max-width:{:.0f}px\" "
      "role=\"img\" aria-label=\"{}\" xmlns=\"http://www.w3.org/2000/svg\">",
      width, height, width * 1.2, html_escape(h.title));
  const size_t every = std::max<size_t>(1, size_t(std::ceil(24.0 / cell_w)));
  for (size_t r = 0; r < h.values.size(); r++) {
    const double y = double(r) * cell_h;
    out += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">{} {}</text>",
                       label - 6, y + cell_h * 0.7, html_escape(h.row_label), r);
    for (size_t col = 0; col < h.values[r].size(); col++) {
      const double v = h.values[r][col];
      const double t = std::isfinite(v) ? std::clamp(v / h.full, 0.0, 1.0) : 0.0;
      // from near-white to dark blue
      const int red = int(std::lround(244 - t * (244 - 8))),
                green = int(std::lround(248 - t * (248 - 48))),
                blue = int(std::lround(251 - t * (251 - 107)));
      out += fmt::format(
          "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" "
          "fill=\"#{:02x}{:02x}{:02x}\"><title>{} {}, {} {}: {}</title></rect>",
          label + double(col) * cell_w, y, cell_w - 1, cell_h - 1, red, green, blue,
          html_escape(h.row_label), r, html_escape(h.col_label), col, html_format_number(v));
    }
  }
  const double base = cell_h * double(h.values.size());
  for (size_t col = 0; col < cols; col += every) {
    out += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>",
                       label + (double(col) + 0.5) * cell_w, base + 14, col);
  }
  out += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text></svg>",
                     label + cell_w * double(cols) / 2, base + 34, html_escape(h.col_label));
  if (!h.note.empty()) {
    out += "<p class=\"note\">" + html_escape(h.note) + "</p>";
  }
  return out + "</figure>";
}

namespace {

constexpr const char* kStyle = R"(
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1180px;padding:12px 20px 40px;color:#1b1f23;background:#fff}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:22px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:16px 0 6px}
.meta{color:#555;margin:0 0 8px}.age{color:#555;font-size:12px}.age.stale{color:#b00020;font-weight:600}
.banner{display:flex;flex-wrap:wrap;gap:6px 22px;align-items:baseline;padding:10px 14px;
border-radius:6px;border:1px solid;margin:8px 0 12px}
.banner b{font-size:16px}.banner span{white-space:nowrap}
.running{background:#eaf3fb;border-color:#7fb0dc}.finished{background:#eaf7ee;border-color:#7cc08e}
.stopped{background:#fff6e0;border-color:#e0b44c}.failed{background:#fdecec;border-color:#e08080}
.pending{background:#f4f4f4;border-color:#ccc}
.status{font-weight:700;text-transform:uppercase;letter-spacing:.04em}
.bar{flex-basis:100%;height:6px;background:#fff;border-radius:3px;overflow:hidden}
.bar i{display:block;height:100%;background:#4a8fd0}
.grid2{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:10px 22px}
figure{margin:0}figcaption{font-weight:600;margin:4px 0}
svg{width:100%;height:auto;font-size:11px;font-family:inherit}
svg text{fill:#333}svg .grid{stroke:#e6e6e6}svg .frame{fill:none;stroke:#999}
svg .marker{stroke:#888;stroke-dasharray:3 3}
svg.heat{display:block}
.legend{display:flex;flex-wrap:wrap;gap:2px 14px;font-size:12px}
.legend i{display:inline-block;width:18px;border-top:3px solid;margin:0 5px 3px 0;vertical-align:middle}
.legend i.dash{border-top-style:dashed}
.empty,.note{color:#666;font-size:12px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{background:#f3f3f3;padding:0 3px;border-radius:3px}
.report img{max-width:100%;height:auto;border:1px solid #eee}
.report table,#runs{display:block;overflow-x:auto;max-width:100%}
.report .figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:10px}
)";

// Keeps the page's age line current and marks it once the page is far older than its refresh:
// a process killed outright leaves a page that says it is running.
constexpr const char* kAgeScript = R"(
(function(){var e=document.getElementById("age");if(!e)return;
var w=Number(e.dataset.written)*1000,r=Number(e.dataset.refresh);
function f(s){return s<120?s+" s":s<7200?Math.round(s/60)+" min":Math.round(s/3600)+" h";}
function tick(){var s=Math.max(0,Math.round((Date.now()-w)/1000));
var t="written "+f(s)+" ago";if(r>0){t+="; reloads every "+r+" s while it runs";
if(s>3*r+60){e.className="age stale";t+=" - not rewritten for "+f(s)+": the process may have ended without saying so";}}
e.textContent=t;}
tick();setInterval(tick,1000);})();
)";

}  // namespace

std::string html_render_page(const HtmlPage& p) {
  std::string out =
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  if (p.refresh_s > 0) {
    out += fmt::format("<meta http-equiv=\"refresh\" content=\"{}\">\n", p.refresh_s);
  }
  out += fmt::format("<title>{}</title>\n<style>{}</style></head>\n<body>\n", html_escape(p.title),
                     kStyle);
  out += fmt::format(
      "<p class=\"age\" id=\"age\" data-written=\"{:.0f}\" data-refresh=\"{}\">written {}</p>\n",
      p.written_unix, p.refresh_s, html_escape(html_format_utc(p.written_unix)));
  out += p.body;
  out += fmt::format("\n<script>{}</script>\n</body></html>\n", kAgeScript);
  return out;
}

double html_now_unix() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string html_format_utc(double unix_s) {
  const std::time_t t = std::time_t(unix_s);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

std::string html_format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) {
    return "-";
  }
  const int64_t s = int64_t(std::lround(seconds));
  if (s >= 3600) {
    return fmt::format("{} h {:02} min", s / 3600, (s % 3600) / 60);
  }
  if (s >= 60) {
    return fmt::format("{} min {:02} s", s / 60, s % 60);
  }
  return fmt::format("{} s", s);
}

std::string html_format_number(double v) {
  if (!std::isfinite(v)) {
    return "-";
  }
  return fmt::format("{:.4g}", v);
}

std::string html_format_count(double v) {
  if (!std::isfinite(v)) {
    return "-";
  }
  const double a = std::abs(v);
  if (a >= 1e9) {
    return fmt::format("{:.3g}G", v / 1e9);
  }
  if (a >= 1e6) {
    return fmt::format("{:.3g}M", v / 1e6);
  }
  if (a >= 1e3) {
    return fmt::format("{:.3g}k", v / 1e3);
  }
  return fmt::format("{:.0f}", v);
}

}  // namespace moelab
