#include "study/study_page.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/html.hpp"

namespace moelab {

namespace fs = std::filesystem;

namespace {

// Charts draw at most this many runs (a large sweep's table still lists all).
constexpr size_t kMaxChartRuns = 24;

std::string base64(std::string_view bytes) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (size_t i = 0; i < bytes.size(); i += 3) {
    const uint32_t b0 = uint8_t(bytes[i]);
    const uint32_t b1 = i + 1 < bytes.size() ? uint8_t(bytes[i + 1]) : 0;
    const uint32_t b2 = i + 2 < bytes.size() ? uint8_t(bytes[i + 2]) : 0;
    const uint32_t v = (b0 << 16) | (b1 << 8) | b2;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? kAlphabet[(v >> 6) & 63] : '=';
    out += i + 2 < bytes.size() ? kAlphabet[v & 63] : '=';
  }
  return out;
}

bool path_exists(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

// ----------------------------------------------------------------------------
// markdown

// Inline markdown: `code`, **bold**, [text](link); everything else escaped.
std::string inline_html(std::string_view s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] == '`') {
      const size_t end = s.find('`', i + 1);
      if (end != std::string_view::npos) {
        out += "<code>" + html_escape(s.substr(i + 1, end - i - 1)) + "</code>";
        i = end + 1;
        continue;
      }
    }
    if (s.substr(i, 2) == "**") {
      const size_t end = s.find("**", i + 2);
      if (end != std::string_view::npos && end > i + 2) {
        out += "<strong>" + inline_html(s.substr(i + 2, end - i - 2)) + "</strong>";
        i = end + 2;
        continue;
      }
    }
    if (s[i] == '[') {
      const size_t close = s.find("](", i);
      const size_t end = close == std::string_view::npos ? close : s.find(')', close);
      if (end != std::string_view::npos &&
          s.substr(i + 1, close - i - 1).find(']') == std::string_view::npos) {
        const std::string_view href = s.substr(close + 2, end - close - 2);
        const bool safe = href.find(':') == std::string_view::npos || href.starts_with("http://") ||
                          href.starts_with("https://");
        const std::string text = inline_html(s.substr(i + 1, close - i - 1));
        out += safe ? "<a href=\"" + html_escape(href) + "\">" + text + "</a>" : text;
        i = end + 1;
        continue;
      }
    }
    out += html_escape(s.substr(i, 1));
    i++;
  }
  return out;
}

std::string trim(std::string_view s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string_view::npos) {
    return "";
  }
  return std::string(s.substr(b, s.find_last_not_of(" \t") - b + 1));
}

std::vector<std::string> table_cells(const std::string& line) {
  std::vector<std::string> cells;
  std::string t = trim(line);
  if (t.starts_with('|')) {
    t.erase(0, 1);
  }
  if (t.ends_with('|')) {
    t.pop_back();
  }
  size_t b = 0;
  for (size_t e = t.find('|');; e = t.find('|', b)) {
    cells.push_back(trim(std::string_view(t).substr(b, e == std::string::npos ? e : e - b)));
    if (e == std::string::npos) {
      break;
    }
    b = e + 1;
  }
  return cells;
}

bool numeric_cell(const std::string& c) {
  return !c.empty() &&
         (std::isdigit(uint8_t(c[0])) ||
          ((c[0] == '-' || c[0] == '+') && c.size() > 1 && std::isdigit(uint8_t(c[1]))));
}

std::string table_html(const std::vector<std::string>& lines) {
  std::string out = "<table>\n";
  for (size_t i = 0; i < lines.size(); i++) {
    const std::vector<std::string> cells = table_cells(lines[i]);
    if (i == 1 && std::all_of(cells.begin(), cells.end(), [](const std::string& c) {
          return c.find_first_not_of("-: ") == std::string::npos;
        })) {
      continue;  // the header's rule
    }
    out += "<tr>";
    for (const std::string& c : cells) {
      out += i == 0 ? "<th>" + inline_html(c) + "</th>"
                    : (numeric_cell(c) ? "<td class=\"num\">" : "<td>") + inline_html(c) + "</td>";
    }
    out += "</tr>\n";
  }
  return out + "</table>\n";
}

// ![alt](NAME.png) as an <img> with the file's bytes inline (NAME.svg where it exists). Only a
// .png or .svg inside `base` is read: an absolute path (which `base / file` would take as it
// is), "..", a scheme or another kind of file would put any readable file into the page.
std::string image_html(const std::string& line, const std::string& base) {
  const size_t close = line.find("](");
  const std::string alt = line.substr(2, close - 2);
  const std::string file = line.substr(close + 2, line.rfind(')') - close - 2);
  const fs::path rel(file);
  if (rel.empty() || rel.is_absolute() || rel.has_root_path() ||
      file.find("..") != std::string::npos || file.find(':') != std::string::npos ||
      (rel.extension() != ".png" && rel.extension() != ".svg")) {
    return "<p class=\"note\">figure " + html_escape(file) +
           " is not shown (a figure is a .png or .svg in the report's folder)</p>";
  }
  fs::path p = fs::path(base) / rel;
  if (p.extension() == ".png" && path_exists(fs::path(p).replace_extension(".svg"))) {
    p.replace_extension(".svg");
  }
  if (!path_exists(p)) {
    return "<p class=\"note\">figure " + html_escape(file) + " is missing</p>";
  }
  const std::string mime = p.extension() == ".svg" ? "image/svg+xml" : "image/png";
  return fmt::format("<figure><img alt=\"{}\" src=\"data:{};base64,{}\"></figure>",
                     html_escape(alt), mime, base64(file_read(p.string())));
}

bool is_image(const std::string& t) {
  return t.starts_with("![") && t.find("](") != std::string::npos && t.ends_with(")");
}

bool is_item(const std::string& t, bool& ordered) {
  if (t.starts_with("- ") || t.starts_with("* ")) {
    ordered = false;
    return true;
  }
  const size_t dot = t.find(". ");
  ordered = dot != std::string::npos && dot > 0 && dot < 4 &&
            std::all_of(t.begin(), t.begin() + long(dot),
                        [](char c) { return std::isdigit(uint8_t(c)); });
  return ordered;
}

// ----------------------------------------------------------------------------
// the runs

struct RunRow {
  std::string name, what;
  std::string state = "pending";  // pending, running, finished, failed, stopped
  std::string message;
  RunSeries* series = nullptr;  // null: no run folder yet
};

// The run folders under DIR (run.json; two levels down at most, the report's folder left out).
std::vector<std::string> run_folders(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (!it->is_directory(ec) || it->path().filename() == "report" ||
        it->path().filename().string().starts_with("step_")) {
      if (it->is_directory(ec)) {
        it.disable_recursion_pending();
      }
      continue;
    }
    if (path_exists(it->path() / "run.json")) {
      out.push_back(fs::relative(it->path(), dir, ec).string());
      it.disable_recursion_pending();
    } else if (it.depth() >= 1) {
      it.disable_recursion_pending();
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

nlohmann::json json_or_null(const fs::path& path) {
  if (!path_exists(path)) {
    return nullptr;
  }
  const nlohmann::json j = nlohmann::json::parse(file_read(path.string()), nullptr, false);
  return j.is_discarded() ? nlohmann::json() : j;
}

// What each run of a study is, as its record names it: a forgetting study's variants
// (study.json: folder -> "MoE E=8 top-2 seed 1"), a continual-training study's methods (ct.json:
// "lora seed 3").
std::map<std::string, std::string> variant_labels(const std::string& dir) {
  std::map<std::string, std::string> out;
  const nlohmann::json study = json_or_null(fs::path(dir) / "study.json");
  if (study.is_object() && study.contains("variants") && study["variants"].is_array()) {
    for (const nlohmann::json& v : study["variants"]) {
      if (v.is_object() && v.contains("dir") && v["dir"].is_string() && v.contains("label") &&
          v["label"].is_string()) {
        out[v["dir"].get<std::string>()] =
            fmt::format("{} seed {}", v["label"].get<std::string>(), v.value("seed", int64_t(0)));
      }
    }
  }
  const nlohmann::json ct = json_or_null(fs::path(dir) / "ct.json");
  if (ct.is_object() && ct.contains("methods") && ct["methods"].is_array()) {
    for (const nlohmann::json& m : ct["methods"]) {
      if (!m.is_object() || !m.contains("runs") || !m["runs"].is_array()) {
        continue;
      }
      for (const nlohmann::json& r : m["runs"]) {
        if (r.is_object() && r.contains("dir") && r["dir"].is_string()) {
          out[r["dir"].get<std::string>()] = fmt::format(
              "{} seed {}", m.value("kind", std::string("?")), r.value("seed", int64_t(0)));
        }
      }
    }
  }
  return out;
}

std::string study_kind(const std::string& dir) {
  if (path_exists(fs::path(dir) / "ct.json")) {
    return "Continual-training study";
  }
  if (path_exists(fs::path(dir) / "study.json")) {
    return "Forgetting study";
  }
  if (path_exists(fs::path(dir) / "sweep.csv")) {
    return "Sweep";
  }
  return "Study";
}

// A run's folder (NAME, or METHOD/seed_S) as a relative URL path: every byte but
// [A-Za-z0-9._~-] and the '/' between folders percent-encoded, so that '#', '?', '%' or a
// "javascript:" prefix are a folder's name and nothing else.
std::string url_path_encode(std::string_view path) {
  std::string out;
  for (const char ch : path) {
    // ASCII only (std::isalnum follows the locale); a leading '/' is no separator
    const bool plain = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                       (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '~' ||
                       ch == '-' || (ch == '/' && !out.empty());
    if (plain) {
      out += ch;
    } else {
      out += fmt::format("%{:02X}", uint8_t(ch));
    }
  }
  return out;
}

std::string runs_table(const std::vector<RunRow>& rows) {
  std::string out =
      "<table id=\"runs\"><tr><th>run</th><th>what</th><th>state</th><th>step</th>"
      "<th>loss</th><th>validation loss</th><th>M_ex</th><th>tokens/s</th></tr>\n";
  for (const RunRow& r : rows) {
    const RunSeries* s = r.series;
    std::string link = html_escape(r.name);
    if (s && path_exists(run_page_path(s->dir))) {
      link = fmt::format("<a href=\"{}/view.html\">{}</a>", html_escape(url_path_encode(r.name)),
                         link);
    }
    std::string val;
    if (s) {
      for (const auto& [key, v] : s->values) {
        if (key.starts_with("val:") && !v.empty()) {
          val += fmt::format("{}{} {}", val.empty() ? "" : ", ", html_escape(key.substr(4)),
                             html_format_number(v.back().second));
        }
      }
    }
    out += fmt::format(
        "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}{}</td><td class=\"num\">{}</td>"
        "<td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>"
        "</tr>\n",
        r.state, link, html_escape(r.what), r.state,
        r.message.empty() ? "" : ": " + html_escape(r.message),
        s ? fmt::format("{} / {}", s->last_step, run_series_total_steps(*s)) : "-",
        s ? html_format_number(run_series_last(*s, "loss")) : "-", val,
        s ? html_format_number(run_series_last(*s, "m_ex")) : "-",
        s ? html_format_count(run_series_last(*s, "tokens_per_s")) : "-");
  }
  return out + "</table>\n";
}

std::string runs_charts(const std::vector<RunRow>& rows) {
  HtmlChart loss{.title = "training loss", .xlabel = "step", .ylabel = "cross-entropy (nats)"};
  std::map<std::string, HtmlChart> val;
  HtmlChart mex{.title = "M_ex on each run's recalled samples",
                .xlabel = "step",
                .ylabel = "share",
                .ymin = 0.0,
                .ymax = 1.0};
  size_t drawn = 0;
  for (const RunRow& r : rows) {
    if (!r.series || drawn == kMaxChartRuns) {
      continue;
    }
    drawn++;
    for (const auto& [key, v] : r.series->values) {
      HtmlSeries s{.name = r.name};
      for (const auto& [x, y] : v) {
        s.x_values.push_back(x);
        s.y_values.push_back(y);
      }
      if (key == "loss") {
        loss.series.push_back(s);
      } else if (key == "m_ex") {
        mex.series.push_back(s);
      } else if (key.starts_with("val:")) {
        HtmlChart& c = val[key];
        c.title = "validation loss on " + key.substr(4);
        c.xlabel = "step";
        c.ylabel = "cross-entropy (nats)";
        c.series.push_back(s);
      }
    }
  }
  std::string out = "<div class=\"grid2\">\n" + html_render_chart(loss) + "\n";
  for (const auto& [key, c] : val) {
    out += html_render_chart(c) + "\n";
  }
  if (!mex.series.empty()) {
    out += html_render_chart(mex) + "\n";
  }
  out += "</div>\n";
  if (drawn == kMaxChartRuns) {
    out += fmt::format("<p class=\"note\">The charts show the first {} runs.</p>\n", drawn);
  }
  return out;
}

// A CSV file (the sweep's results) as a table.
std::string csv_html(const std::string& path) {
  std::string out = "<table>\n";
  size_t row = 0;
  const std::string text = file_read(path);
  size_t b = 0;
  while (b < text.size()) {
    size_t e = text.find('\n', b);
    if (e == std::string::npos) {
      e = text.size();
    }
    const std::string line = text.substr(b, e - b);
    b = e + 1;
    if (line.empty()) {
      continue;
    }
    out += "<tr>";
    size_t cb = 0;
    for (size_t ce = line.find(',');; ce = line.find(',', cb)) {
      const std::string cell = line.substr(cb, ce == std::string::npos ? ce : ce - cb);
      out += row == 0 ? "<th>" + html_escape(cell) + "</th>"
                      : (numeric_cell(cell) ? "<td class=\"num\">" : "<td>") + html_escape(cell) +
                            "</td>";
      if (ce == std::string::npos) {
        break;
      }
      cb = ce + 1;
    }
    out += "</tr>\n";
    row++;
  }
  return out + "</table>\n";
}

// The figures `moelab fit` drew into DIR (a sweep's DIR/fit: fit_*.svg, or .png), inline.
std::string fit_figures_html(const std::string& dir) {
  std::error_code ec;
  if (!path_exists(fs::path(dir) / "fit.json")) {
    return "";
  }
  std::vector<std::string> stems;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const fs::path f = e.path().filename();
    if (f.string().starts_with("fit_") && (f.extension() == ".svg" || f.extension() == ".png")) {
      stems.push_back(f.stem().string());
    }
  }
  std::sort(stems.begin(), stems.end());
  stems.erase(std::unique(stems.begin(), stems.end()), stems.end());
  if (stems.empty()) {
    return "";
  }
  std::string out = "<div class=\"report\"><h2>Scaling-law fit (fit/)</h2><div class=\"figs\">";
  for (const std::string& s : stems) {
    out += image_html(fmt::format("![{0}]({0}.png)", s), dir);
  }
  return out + "</div></div>\n";
}

struct RunCounts {
  size_t done = 0, running = 0, failed = 0, pending = 0;
};

// Each row's state: its folder's own (study/run_page.hpp), the run this process trains, or one
// that another process (a sweep's worker) is training: its metrics changed in the last minutes.
RunCounts read_states(const StudyPage& p, std::vector<RunRow>& rows,
                      std::map<std::string, RunSeries>& runs) {
  RunCounts n;
  for (size_t i = 0; i < rows.size(); i++) {
    RunRow& row = rows[i];
    const std::string dir = (fs::path(p.dir) / row.name).string();
    RunSeries& s = runs.try_emplace(dir, RunSeries{.dir = dir}).first->second;
    if (!run_series_update(s)) {
      if (path_exists(fs::path(dir) / "failed.json")) {
        row.state = "failed";
        row.message = "before its first step";
        n.failed++;
      } else {
        n.pending++;
      }
      continue;
    }
    row.series = &s;
    const RunPageStatus st = run_page_status_of(s);
    std::error_code ec;
    const auto mtime = fs::last_write_time(fs::path(dir) / "metrics.jsonl", ec);
    const double age =
        ec ? 1e9 : std::chrono::duration<double>(fs::file_time_type::clock::now() - mtime).count();
    if (int64_t(i) == p.current || (p.live && st.state == RunState::Stopped &&
                                    age < std::max(120.0, 3 * run_page_period_s()))) {
      row.state = "running";
      n.running++;
    } else if (st.state == RunState::Finished) {
      row.state = "finished";
      n.done++;
    } else if (st.state == RunState::Failed) {
      row.state = "failed";
      row.message = st.message;
      n.failed++;
    } else {
      row.state = p.live ? "pending" : "stopped";
      row.message = p.live ? "resumes when its turn comes" : "";
      n.pending++;
    }
  }
  return n;
}

}  // namespace

std::string study_markdown_html(const std::string& md, const std::string& base) {
  std::vector<std::string> lines;
  for (size_t b = 0; b <= md.size();) {
    size_t e = md.find('\n', b);
    if (e == std::string::npos) {
      e = md.size();
    }
    lines.push_back(md.substr(b, e - b));
    b = e + 1;
  }
  std::string out;
  std::string para;
  const auto flush = [&] {
    if (!para.empty()) {
      out += "<p>" + inline_html(para) + "</p>\n";
      para.clear();
    }
  };
  for (size_t i = 0; i < lines.size();) {
    const std::string t = trim(lines[i]);
    bool ordered = false;
    if (t.empty()) {
      flush();
      i++;
    } else if (t.starts_with('#')) {
      flush();
      // "#" alone or "#######" are headings too: the text starts after every '#'
      const size_t hashes = std::min(t.find_first_not_of('#'), t.size());
      const size_t level = std::min<size_t>(hashes, 5);
      out += fmt::format("<h{0}>{1}</h{0}>\n", level + 1, inline_html(trim(t.substr(hashes))));
      i++;
    } else if (t.starts_with('|')) {
      flush();
      std::vector<std::string> rows;
      while (i < lines.size() && trim(lines[i]).starts_with('|')) {
        rows.push_back(lines[i++]);
      }
      out += table_html(rows);
    } else if (is_image(t)) {
      flush();
      out += "<div class=\"figs\">";
      while (i < lines.size() && (trim(lines[i]).empty() || is_image(trim(lines[i])))) {
        if (!trim(lines[i]).empty()) {
          out += image_html(trim(lines[i]), base);
        }
        i++;
      }
      out += "</div>\n";
    } else if (is_item(t, ordered)) {
      flush();
      out += ordered ? "<ol>\n" : "<ul>\n";
      bool item_ordered = false;
      while (i < lines.size() && is_item(trim(lines[i]), item_ordered) && item_ordered == ordered) {
        std::string item = trim(lines[i]);
        item = item.substr(item.find(' ') + 1);
        i++;
        // continuation lines: indented, not a new item
        while (i < lines.size() && lines[i].starts_with("  ") &&
               !is_item(trim(lines[i]), item_ordered)) {
          item += ' ';
          item += trim(lines[i++]);
        }
        out += "<li>" + inline_html(item) + "</li>\n";
      }
      out += ordered ? "</ol>\n" : "</ul>\n";
    } else {
      para += (para.empty() ? "" : " ") + t;
      i++;
    }
  }
  flush();
  return out;
}

std::string StudyPageWriter::write(const StudyPage& p) {
  std::vector<RunRow> rows;
  std::set<std::string> listed;
  for (const StudyPageRun& r : p.runs) {
    rows.push_back({.name = r.name, .what = r.what});
    listed.insert(r.name);
  }
  const std::map<std::string, std::string> labels = variant_labels(p.dir);
  for (const std::string& name : run_folders(p.dir)) {
    if (!listed.contains(name)) {
      const auto it = labels.find(name);
      rows.push_back({.name = name, .what = it == labels.end() ? "" : it->second});
    }
  }
  const RunCounts n = read_states(p, rows, runs_);
  const size_t done = n.done, running = n.running, failed = n.failed, pending = n.pending;
  const double now = html_now_unix();
  const std::string title = study_kind(p.dir);
  const std::string state =
      p.live ? "running" : (failed > 0 ? "failed" : (done == rows.size() ? "finished" : "stopped"));
  std::string body = fmt::format("<h1>{}: {}</h1>\n<p class=\"meta\">{}</p>\n", html_escape(title),
                                 html_escape(run_page_folder_name(p.dir)), html_escape(p.dir));
  body += fmt::format(
      "<div class=\"banner {}\" id=\"banner\" data-state=\"{}\" data-done=\"{}\" "
      "data-runs=\"{}\"><span class=\"status\">{}</span><b id=\"progress\">{} of {} runs "
      "finished</b><span>{} running</span><span>{} pending</span><span>{} failed</span>",
      state, state, done, rows.size(), state, done, rows.size(), running, pending, failed);
  if (p.current >= 0 && size_t(p.current) < rows.size() && rows[size_t(p.current)].series) {
    const RunSeries& s = *rows[size_t(p.current)].series;
    body += fmt::format("<span>now: {} at step {} / {}</span>",
                        html_escape(rows[size_t(p.current)].name), s.last_step,
                        run_series_total_steps(s));
  }
  const double pct = rows.empty() ? 0.0 : 100.0 * double(done) / double(rows.size());
  body += fmt::format("<div class=\"bar\"><i style=\"width:{:.1f}%\"></i></div>", pct);
  if (p.live && !p.note.empty()) {
    body += "<span>" + html_escape(p.note) + "</span>";
  }
  if (!p.end.empty()) {
    body += "<span class=\"msg\">" + html_escape(p.end) + "</span>";
  }
  body += "</div>\n<h2>Runs</h2>\n" + runs_table(rows) + runs_charts(rows);
  for (const std::string& report : p.report) {
    if (path_exists(report)) {
      body += "<div class=\"report\">\n" +
              study_markdown_html(file_read(report), fs::path(report).parent_path().string()) +
              "</div>\n";
    }
  }
  if (!p.live && path_exists(fs::path(p.dir) / "sweep.csv")) {
    body += "<div class=\"report\"><h2>Results (sweep.csv)</h2>\n" +
            csv_html((fs::path(p.dir) / "sweep.csv").string()) + "</div>\n";
  }
  if (!p.live) {
    body += fit_figures_html((fs::path(p.dir) / "fit").string());
  }
  const std::string path = (fs::path(p.dir) / "view.html").string();
  file_write_atomic(
      path,
      html_render_page(
          {.title = fmt::format("{} - {} of {} runs finished", title, done, rows.size()),
           .body = body,
           .refresh_s = p.live ? std::max<int64_t>(2, int64_t(std::ceil(run_page_period_s()))) : 0,
           .written_unix = now}),
      fmt::format(".tmp.{}", ::getpid()));
  return path;
}

void study_page_after_report(const std::string& dir, const std::string& summary) {
  try {
    StudyPageWriter w;
    StudyPage p{.dir = dir};
    if (!summary.empty()) {
      p.report.push_back(summary);
    }
    w.write(p);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "warning: the study's page was not written: %s\n",
                 one_line(e.what()).c_str());
  }
}

std::vector<std::string> study_view_write(const std::vector<std::string>& dirs) {
  std::vector<std::string> pages;
  for (const std::string& dir : dirs) {
    if (!fs::is_directory(dir)) {
      fail(fmt::format("{}: no such folder", dir));
    }
    if (path_exists(fs::path(dir) / "run.json")) {
      RunSeries r{.dir = dir};
      run_series_update(r);
      pages.push_back(run_page_write(r, run_page_status_of(r)));
      continue;
    }
    const std::vector<std::string> runs = run_folders(dir);
    if (runs.empty()) {
      fail(
          fmt::format("{}: neither a run folder (run.json) nor a study folder (run folders "
                      "below it)",
                      dir));
    }
    for (const std::string& name : runs) {
      RunSeries r{.dir = (fs::path(dir) / name).string()};
      run_series_update(r);
      pages.push_back(run_page_write(r, run_page_status_of(r)));
    }
    StudyPage p{.dir = dir};
    const fs::path summary = fs::path(dir) / "report" / "summary.md";
    if (path_exists(summary)) {
      p.report.push_back(summary.string());
    }
    StudyPageWriter w;
    pages.push_back(w.write(p));
  }
  return pages;
}

}  // namespace moelab
