#include "train/run_page.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/html.hpp"
#include "train/collective.hpp"
#include "train/trainer.hpp"

namespace moelab {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The study's page, where one follows this process's runs (RunPageListener).
std::function<void()> g_listener;

void listener_call() {
  if (g_listener) {
    g_listener();
  }
}

void add(RunSeries& r, const std::string& key, int64_t step, const json& v) {
  if (v.is_number()) {
    r.values[key].emplace_back(double(step), v.get<double>());
  }
}

void line_read(RunSeries& r, const std::string& text) {
  const json m = json::parse(text, nullptr, false);
  if (!m.is_object() || !m.contains("step") || !m["step"].is_number_integer()) {
    r.bad_lines++;
    return;
  }
  const int64_t step = m["step"].get<int64_t>();
  r.last_step = std::max(r.last_step, step);
  if (m.contains("phase") && m["phase"].is_string()) {
    r.phase = m["phase"].get<std::string>();
  }
  if (m.contains("skipped")) {
    r.skipped++;
  }
  for (const char* key : {"loss", "lr", "grad_norm", "aux_loss", "z_loss", "tokens_per_s", "mfu"}) {
    if (m.contains(key)) {
      add(r, key, step, m[key]);
    }
  }
  if (m.contains("val_loss") && m["val_loss"].is_object()) {
    for (const auto& [subset, v] : m["val_loss"].items()) {
      add(r, "val:" + subset, step, v);
    }
  }
  const json* f = m.contains("forgetting") ? &m["forgetting"] : nullptr;
  if (f && f->is_object() && f->contains("metrics") && (*f)["metrics"].is_object()) {
    for (const char* key : {"m_ex", "m_in", "m_f"}) {
      if ((*f)["metrics"].contains(key)) {
        add(r, key, step, (*f)["metrics"][key]);
      }
    }
  }
  if (m.contains("router") && m["router"].is_array()) {
    for (const json& layer : m["router"]) {
      if (layer.is_object() && layer.contains("layer") && layer.contains("max_load")) {
        add(r, fmt::format("max_load:{}", layer["layer"].dump()), step, layer["max_load"]);
      }
    }
  }
  if (m.contains("expert_load") && m["expert_load"].is_array()) {
    std::vector<std::vector<double>> load;
    for (const json& layer : m["expert_load"]) {
      std::vector<double>& row = load.emplace_back();
      if (layer.is_array()) {
        for (const json& v : layer) {
          row.push_back(v.is_number() ? v.get<double>() : NAN);
        }
      }
    }
    r.load = std::move(load);
    r.load_step = step;
  }
}

std::vector<double> firsts(const std::vector<std::pair<double, double>>& v) {
  std::vector<double> out;
  for (const auto& p : v) {
    out.push_back(p.first);
  }
  return out;
}
std::vector<double> seconds(const std::vector<std::pair<double, double>>& v) {
  std::vector<double> out;
  for (const auto& p : v) {
    out.push_back(p.second);
  }
  return out;
}

HtmlSeries series_of(const RunSeries& r, const std::string& key, std::string name,
                     bool dashed = false) {
  HtmlSeries s{.name = std::move(name), .dashed = dashed};
  if (const auto it = r.values.find(key); it != r.values.end()) {
    s.x_values = firsts(it->second);
    s.y_values = seconds(it->second);
  }
  return s;
}

bool has(const RunSeries& r, const std::string& key) {
  const auto it = r.values.find(key);
  return it != r.values.end() && !it->second.empty();
}

// The steps at which a phase ends and the next begins (run.json "phases").
std::vector<double> phase_switches(const RunSeries& r) {
  std::vector<double> out;
  if (!r.run.is_object() || !r.run.contains("phases") || !r.run["phases"].is_array()) {
    return out;
  }
  const json& phases = r.run["phases"];
  for (size_t i = 0; i + 1 < phases.size(); i++) {
    if (phases[i].is_object() && phases[i].contains("end_step") &&
        phases[i]["end_step"].is_number()) {
      out.push_back(phases[i]["end_step"].get<double>());
    }
  }
  return out;
}

// The median of the last few tokens_per_s values (a forgetting evaluation slows one window).
double recent_speed(const RunSeries& r) {
  const auto it = r.values.find("tokens_per_s");
  if (it == r.values.end() || it->second.empty()) {
    return NAN;
  }
  std::vector<double> v;
  for (size_t i = it->second.size() > 9 ? it->second.size() - 9 : 0; i < it->second.size(); i++) {
    v.push_back(it->second[i].second);
  }
  std::nth_element(v.begin(), v.begin() + long(v.size() / 2), v.end());
  return v[v.size() / 2];
}

std::string model_line(const json& run) {
  std::string out;
  const auto num = [&](const char* key) {
    return run.contains(key) && run[key].is_number() ? run[key].get<double>() : NAN;
  };
  const double experts = num("experts"), top_k = num("top_k");
  if (std::isfinite(experts) && experts > 1) {
    out += fmt::format("MoE, {} experts, top-{}", experts, top_k);
  } else {
    out += "dense";
  }
  if (std::isfinite(num("params_total"))) {
    out += fmt::format("; {} parameters ({} active)", html_format_count(num("params_total")),
                       html_format_count(num("params_active")));
  }
  if (std::isfinite(num("tokens_per_step"))) {
    out += fmt::format("; {} tokens per step", num("tokens_per_step"));
  }
  if (run.contains("seed") && run["seed"].is_number()) {
    out += fmt::format("; seed {}", run["seed"].dump());
  }
  return out;
}

std::string banner_html(const RunSeries& r, const RunPageStatus& st) {
  const int64_t total = run_series_total_steps(r);
  const int64_t step = std::max(r.last_step, st.step);
  const double pct = total > 0 ? 100.0 * double(step) / double(total) : 0.0;
  const char* state = run_state_name(st.state);
  std::string out = fmt::format(
      "<div class=\"banner {}\" id=\"banner\" data-state=\"{}\" data-step=\"{}\" "
      "data-total=\"{}\">\n<span class=\"status\">{}</span><b id=\"step\">step {} / {}</b>"
      "<span>{:.1f}%</span>",
      st.state == RunState::Interrupted ? "stopped" : state, state, step, total, state, step, total,
      pct);
  if (!r.phase.empty()) {
    out += fmt::format("<span>phase {}</span>", html_escape(r.phase));
  }
  out += fmt::format("<span>loss {}</span>", html_format_number(run_series_last(r, "loss")));
  for (const auto& [key, v] : r.values) {
    if (key.starts_with("val:") && !v.empty()) {
      out += fmt::format("<span>val loss {} {}</span>", html_escape(key.substr(4)),
                         html_format_number(v.back().second));
    }
  }
  const double speed = recent_speed(r);
  out += fmt::format("<span>{} tokens/s</span>", html_format_count(speed));
  if (st.state == RunState::Running) {
    double eta = st.eta_s;
    if (eta < 0 && std::isfinite(speed) && speed > 0 && r.run.contains("tokens_per_step")) {
      eta = double(total - step) * r.run["tokens_per_step"].get<double>() / speed;
    }
    out += fmt::format("<span>ETA {}</span>", html_format_duration(eta));
  }
  out += fmt::format("<div class=\"bar\"><i style=\"width:{:.1f}%\"></i></div>", pct);
  if (!st.message.empty()) {
    out += "<span class=\"msg\">" + html_escape(st.message) + "</span>";
  }
  return out + "</div>\n";
}

std::string figures_html(const RunSeries& r) {
  const std::vector<double> switches = phase_switches(r);
  std::string out = "<div class=\"grid2\">\n";
  HtmlChart loss{.title = "loss", .xlabel = "step", .ylabel = "cross-entropy (nats)"};
  loss.series.push_back(series_of(r, "loss", "training loss"));
  for (const auto& [key, v] : r.values) {
    if (key.starts_with("val:")) {
      loss.series.push_back(series_of(r, key, "validation loss " + key.substr(4), true));
    }
  }
  loss.markers = switches;
  out += html_render_chart(loss) + "\n";
  HtmlChart lr{.title = "learning rate", .xlabel = "step", .ylabel = "lr"};
  lr.series.push_back(series_of(r, "lr", "learning rate"));
  lr.markers = switches;
  out += html_render_chart(lr) + "\n";
  if (has(r, "m_ex") || has(r, "m_in")) {
    HtmlChart f{.title = "forgetting: M_ex and M_in on the recalled samples",
                .xlabel = "step",
                .ylabel = "share",
                .ymin = 0.0,
                .ymax = 1.0};
    f.series = {series_of(r, "m_ex", "M_ex"), series_of(r, "m_in", "M_in"),
                series_of(r, "m_f", "M(f)", true)};
    f.markers = switches;
    out += html_render_chart(f) + "\n";
  }
  HtmlChart maxload{
      .title = "router: largest expert's load per layer", .xlabel = "step", .ylabel = "load x E"};
  for (const auto& [key, v] : r.values) {
    if (key.starts_with("max_load:")) {
      maxload.series.push_back(series_of(r, key, "layer " + key.substr(9)));
    }
  }
  if (!maxload.series.empty()) {
    maxload.markers = switches;
    out += html_render_chart(maxload) + "\n";
  }
  if (!r.load.empty()) {
    const double experts = double(r.load.front().size());
    out += html_render_heatmap(
               {.title = fmt::format("expert load at step {}", r.load_step),
                .row_label = "layer",
                .col_label = "expert",
                .note = fmt::format("The share of the routed tokens each expert took in the "
                                    "step's last micro-batch; fair share 1/E = {}, the darkest "
                                    "shade twice that or more.",
                                    html_format_number(1.0 / experts)),
                .values = r.load,
                .full = 2.0 / experts}) +
           "\n";
  }
  if (has(r, "aux_loss") || has(r, "z_loss")) {
    HtmlChart router{
        .title = "router losses", .xlabel = "step", .ylabel = "loss (with coefficient)"};
    router.series = {series_of(r, "aux_loss", "load-balancing loss"),
                     series_of(r, "z_loss", "z-loss")};
    router.markers = switches;
    out += html_render_chart(router) + "\n";
  }
  HtmlChart speed{.title = "speed", .xlabel = "step", .ylabel = "tokens/s", .ymin = 0.0};
  speed.series.push_back(series_of(r, "tokens_per_s", "tokens/s"));
  out += html_render_chart(speed) + "\n";
  HtmlChart grad{.title = "gradient norm", .xlabel = "step", .ylabel = "norm", .logy = true};
  grad.series.push_back(series_of(r, "grad_norm", "before clipping"));
  grad.markers = switches;
  out += html_render_chart(grad) + "\n";
  return out + "</div>\n";
}

// The last logged value of every series, one row each.
std::string table_html(const RunSeries& r) {
  std::string out =
      "<h2>Last logged values</h2>\n<table><tr><th>series</th><th>step</th>"
      "<th>value</th></tr>\n";
  for (const auto& [key, v] : r.values) {
    if (!v.empty()) {
      out += fmt::format("<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
                         html_escape(key), int64_t(v.back().first),
                         html_format_number(v.back().second));
    }
  }
  out += "</table>\n";
  if (r.skipped > 0 || r.bad_lines > 0) {
    out += fmt::format(
        "<p class=\"note\">{} steps skipped (non-finite loss or gradient); {} lines of "
        "metrics.jsonl unreadable.</p>\n",
        r.skipped, r.bad_lines);
  }
  return out;
}

}  // namespace

namespace {

// The bytes of metrics.jsonl an update checks are still where the last one stopped reading.
constexpr size_t kTailBytes = 256;

// An open file descriptor, closed when it goes.
struct FileHandle {
  explicit FileHandle(int f) : fd(f) {}
  ~FileHandle() {
    if (fd >= 0) {
      ::close(fd);
    }
  }
  FileHandle(const FileHandle&) = delete;
  FileHandle& operator=(const FileHandle&) = delete;
  const int fd;
};

// run.json, read again where its modification time changed since the last read.
void run_json_update(RunSeries& r, const fs::path& path) {
  std::error_code ec;
  const fs::file_time_type t = fs::last_write_time(path, ec);
  if (!r.run.is_null() && !ec && t == r.run_time) {
    return;
  }
  r.run = json::parse(file_read(path.string()), nullptr, false);
  if (r.run.is_discarded()) {
    r.run = json::object();
  }
  r.run_time = ec ? fs::file_time_type{} : t;
}

// Whether what was read of metrics.jsonl is still the start of the open file (same inode, no
// smaller, the last bytes read still where they were).
bool metrics_unchanged(const RunSeries& r, int fd, const struct stat& st) {
  if (uint64_t(st.st_dev) != r.device || uint64_t(st.st_ino) != r.inode ||
      uint64_t(st.st_size) < r.offset) {
    return false;
  }
  std::string here(r.tail.size(), '\0');
  const ssize_t n = ::pread(fd, here.data(), here.size(), off_t(r.offset - r.tail.size()));
  return n == ssize_t(here.size()) && here == r.tail;
}

}  // namespace

bool run_series_update(RunSeries& r) {
  const fs::path dir(r.dir);
  std::error_code ec;
  if (!fs::exists(dir / "run.json", ec)) {
    return false;
  }
  run_json_update(r, dir / "run.json");
  const std::string path = (dir / "metrics.jsonl").string();
  const FileHandle file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  const int fd = file.fd;
  if (fd < 0) {
    return true;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || (r.offset > 0 && !metrics_unchanged(r, fd, st))) {
    // another file (a resume cut it back) or rewritten: read it again from its start
    RunSeries fresh{.dir = r.dir, .run = r.run, .run_time = r.run_time};
    r = std::move(fresh);
  }
  r.device = uint64_t(st.st_dev);
  r.inode = uint64_t(st.st_ino);
  // [offset, size) as it is now; a line still being written is read next time
  std::string text(uint64_t(st.st_size) > r.offset ? uint64_t(st.st_size) - r.offset : 0, '\0');
  size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = ::pread(fd, text.data() + got, text.size() - got, off_t(r.offset + got));
    if (n <= 0) {
      break;
    }
    got += size_t(n);
  }
  text.resize(got);
  size_t begin = 0;
  for (size_t nl = text.find('\n'); nl != std::string::npos; nl = text.find('\n', begin)) {
    if (nl > begin) {
      line_read(r, text.substr(begin, nl - begin));
    }
    begin = nl + 1;
  }
  // the tail ends at the new offset: the old one's bytes, then what was read up to there
  const size_t fresh_bytes = std::min(begin, kTailBytes);
  r.tail += text.substr(begin - fresh_bytes, fresh_bytes);
  if (r.tail.size() > kTailBytes) {
    r.tail.erase(0, r.tail.size() - kTailBytes);
  }
  r.offset += begin;
  return true;
}

double run_series_last(const RunSeries& r, const std::string& key) {
  const auto it = r.values.find(key);
  return it == r.values.end() || it->second.empty() ? NAN : it->second.back().second;
}

int64_t run_series_total_steps(const RunSeries& r) {
  return r.run.is_object() && r.run.contains("total_steps") && r.run["total_steps"].is_number()
             ? r.run["total_steps"].get<int64_t>()
             : 0;
}

const char* run_state_name(RunState s) {
  switch (s) {
    case RunState::Running:
      return "running";
    case RunState::Finished:
      return "finished";
    case RunState::Interrupted:
      return "interrupted";
    case RunState::Failed:
      return "failed";
    case RunState::Stopped:
      break;
  }
  return "stopped";
}

RunPageStatus run_page_status_of(const RunSeries& r) {
  RunPageStatus st;
  const int64_t total = run_series_total_steps(r);
  if (total > 0 && r.last_step >= total) {
    st.state = RunState::Finished;
    return st;
  }
  const fs::path failed_path = fs::path(r.dir) / "failed.json";
  std::error_code ec;
  const json failed = fs::exists(failed_path, ec)
                          ? json::parse(file_read(failed_path.string()), nullptr, false)
                          : json();
  if (failed.is_object()) {
    st.state = RunState::Failed;
    st.message = failed.value("reason", std::string("failed.json records a failure"));
    return st;
  }
  st.message = fmt::format("not training: stopped at step {} of {}", r.last_step, total);
  return st;
}

namespace {
// The folder, absolute, without a trailing separator ("runs/x/" -> /.../runs/x).
fs::path folder_of(const std::string& dir) {
  fs::path p = fs::absolute(dir).lexically_normal();
  return p.has_filename() ? p : p.parent_path();
}
}  // namespace

std::string run_page_folder_name(const std::string& dir) {
  return folder_of(dir).filename().string();
}

std::string run_page_path(const std::string& run_dir) {
  return (fs::path(run_dir) / "view.html").string();
}

std::string run_page_write(RunSeries& r, const RunPageStatus& st) {
  if (!run_series_update(r)) {
    fail(fmt::format("{}: no run.json (not a run folder)", r.dir));
  }
  // a ct study's METHOD/seed_S is named by both
  std::string name = run_page_folder_name(r.dir);
  if (name.starts_with("seed_")) {
    name = folder_of(r.dir).parent_path().filename().string() + "/" + name;
  }
  std::string body =
      fmt::format("<h1>Run {}</h1>\n<p class=\"meta\">{}", html_escape(name), html_escape(r.dir));
  if (r.run.contains("experiment") && r.run["experiment"].is_string()) {
    body += " &middot; experiment " + html_escape(r.run["experiment"].get<std::string>());
  }
  body += " &middot; " + html_escape(model_line(r.run)) + "</p>\n";
  // a study's run: its folder (or its method's, ct's METHOD/seed_S) holds the study's page, or
  // the settings every study records there (its page may be written after the runs')
  const fs::path parent = folder_of(r.dir).parent_path();
  std::error_code ec;
  for (const auto& [up, href] :
       {std::pair{parent, "../view.html"}, std::pair{parent.parent_path(), "../../view.html"}}) {
    if (fs::exists(up / "view.html", ec) || fs::exists(up / "settings.json", ec)) {
      body += fmt::format("<p class=\"meta\"><a href=\"{}\">the study's page</a></p>\n", href);
      break;
    }
  }
  body += banner_html(r, st);
  body += figures_html(r);
  body += table_html(r);
  const std::string path = run_page_path(r.dir);
  file_write_atomic(
      path,
      html_render_page({.title = fmt::format("{} - {} at step {}", name, run_state_name(st.state),
                                             std::max(r.last_step, st.step)),
                        .body = body,
                        .refresh_s = st.state == RunState::Running ? st.refresh_s : 0,
                        .written_unix = html_now_unix()}),
      fmt::format(".tmp.{}", ::getpid()));
  return path;
}

double run_page_period_s() {
  const char* v = std::getenv("MOELAB_VIEW_SECONDS");
  if (!v || !*v) {
    return 10;
  }
  char* end = nullptr;
  const double s = std::strtod(v, &end);
  if (*end != '\0' || !std::isfinite(s) || s < 0) {
    fail(fmt::format("MOELAB_VIEW_SECONDS: '{}' is not a number of seconds >= 0", v));
  }
  return s;
}

RunPageHook::RunPageHook(const Experiment& x) : period_s_(run_page_period_s()) {
  series_.dir = x.run_dir;  // a bad MOELAB_VIEW_SECONDS was refused above, before the run
}

void RunPageHook::on_start(Trainer& t) {
  if (!train_writer()) {
    return;
  }
  series_ = RunSeries{.dir = series_.dir};
  t_start_ = html_now_unix();
  step_start_ = t.steps_done();
  write(t.steps_done(), t.experiment().total_steps());
}

void RunPageHook::on_step_end(Trainer& t, const StepStats& r) {
  const double now = html_now_unix();
  if (!train_writer() || now - t_last_ < std::max(period_s_, 20 * cost_s_)) {
    return;
  }
  write(r.step, t.experiment().total_steps());
}

void RunPageHook::write(int64_t step, int64_t total) {
  const double t0 = html_now_unix();
  const double rate = double(step - step_start_) / std::max(t0 - t_start_, 1e-9);
  RunPageStatus st{.state = RunState::Running,
                   .step = step,
                   .eta_s = step > step_start_ ? double(total - step) / rate : -1,
                   .refresh_s = std::max<int64_t>(2, int64_t(std::ceil(period_s_)))};
  try {
    run_page_write(series_, st);
    listener_call();
  } catch (const std::exception& e) {
    if (!warned_) {  // once: the run goes on, and its log stays readable
      std::fprintf(stderr, "warning: the run's page was not written: %s\n",
                   one_line(e.what()).c_str());
    }
    warned_ = true;
  }
  t_last_ = html_now_unix();
  cost_s_ = t_last_ - t0;
}

void run_page_finish(const Experiment& x, int rc, const std::string& error) {
  std::error_code ec;
  if (!train_writer() || !fs::exists(fs::path(x.run_dir) / "run.json", ec)) {
    return;
  }
  try {
    RunSeries r{.dir = x.run_dir};
    run_series_update(r);
    RunPageStatus st = run_page_status_of(r);
    if (!error.empty()) {
      st.state = RunState::Failed;
      st.message = error;
    } else if (rc == 130) {
      st.state = RunState::Interrupted;
      st.message = fmt::format("interrupted at step {} of {}; --resume continues it", r.last_step,
                               x.total_steps());
    }
    run_page_write(r, st);
    listener_call();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "warning: the run's page was not written: %s\n",
                 one_line(e.what()).c_str());
  }
}

RunPageListener::RunPageListener(std::function<void()> f) {
  g_listener = std::move(f);
}

RunPageListener::~RunPageListener() {
  g_listener = nullptr;
}

}  // namespace moelab
