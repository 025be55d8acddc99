// The HTML view's parts (docs/view.md): escaping, the SVG charts, the markdown of the reports, a
// run folder's series read in increments, and the state a folder shows by itself.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <regex>
#include <stdexcept>
#include <string>

#include "core/fileio.hpp"
#include "core/html.hpp"
#include "study/queue.hpp"
#include "study/study_page.hpp"
#include "train/run_page.hpp"

namespace fs = std::filesystem;
using namespace moelab;

namespace {

fs::path scratch(const std::string& name) {
  const fs::path p = fs::temp_directory_path() /
                     ("moelab_html_" + name + "_" +
                      std::to_string(::testing::UnitTest::GetInstance()->random_seed()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

void write(const fs::path& p, const std::string& text, bool append = false) {
  std::ofstream f(p, append ? std::ios::app : std::ios::trunc);
  f << text;
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t i = s.find(what); i != std::string::npos; i = s.find(what, i + what.size())) {
    n++;
  }
  return n;
}

// Runs f on a thread and waits 10 s for it: a call still running then is a hang, which ends the
// test binary (a stuck thread can be neither joined nor stopped) with a line saying so.
template <class F>
void within_10s(const char* what, F f) {
  auto done = std::async(std::launch::async, f);
  if (done.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    std::fprintf(stderr, "FAILED: %s did not return within 10 s (a hang)\n", what);
    std::fflush(stderr);
    std::_Exit(1);
  }
  done.get();
}

std::string page_of(const fs::path& dir) {
  return file_read((dir / "view.html").string());
}

}  // namespace

TEST(Html, EscapesEveryMarkupCharacter) {
  EXPECT_EQ(html_escape(R"(<a href="x">&'</a>)"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
  EXPECT_EQ(html_escape("plain text 1.5"), "plain text 1.5");
}

TEST(Html, ChartWithoutPointsSaysSo) {
  HtmlChart c{.title = "loss <A>"};
  c.series.push_back({.name = "x"});
  const std::string out = html_render_chart(c);
  EXPECT_NE(out.find("nothing logged yet"), std::string::npos);
  EXPECT_NE(out.find("loss &lt;A&gt;"), std::string::npos);
  EXPECT_EQ(out.find("<svg"), std::string::npos);
}

TEST(Html, NonFiniteValuesBreakTheLine) {
  HtmlChart c{.title = "t"};
  c.series.push_back({.name = "s", .x_values = {1, 2, 3, 4, 5}, .y_values = {1, 2, NAN, 4, 5}});
  const std::string out = html_render_chart(c);
  const std::smatch m = [&] {
    std::smatch r;
    std::regex_search(out, r, std::regex("<path d=\"([^\"]*)\""));
    return r;
  }();
  ASSERT_FALSE(m.empty());
  EXPECT_EQ(count(m[1].str(), "M"), 2U);  // two pieces: 1-2 and 4-5
  EXPECT_EQ(count(m[1].str(), "L"), 2U);
}

TEST(Html, ThinnedCurveKeepsItsSpike) {
  HtmlSeries s{.name = "loss"};
  for (int i = 0; i < 10000; i++) {
    s.x_values.push_back(i);
    s.y_values.push_back(i == 6789 ? 100.0 : 1.0);
  }
  HtmlChart c{.title = "t", .series = {s}};
  const std::string out = html_render_chart(c);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(out, m, std::regex("<path d=\"([^\"]*)\"")));
  const std::string d = m[1].str();
  EXPECT_LE(count(d, "L") + count(d, "M"), 1200U);
  // the spike is the highest value: drawn at the top of the plot (y = 12 plus the margin)
  double top = 1e9;
  const std::regex pt("[ML]([0-9.]+) ([0-9.]+)");
  for (auto it = std::sregex_iterator(d.begin(), d.end(), pt); it != std::sregex_iterator(); ++it) {
    top = std::min(top, std::stod((*it)[2].str()));
  }
  EXPECT_LT(top, 25.0);
}

TEST(Html, PageReloadsOnlyWhenAsked) {
  const std::string live = html_render_page({.title = "a", .body = "<p>b</p>", .refresh_s = 7});
  EXPECT_NE(live.find("<meta http-equiv=\"refresh\" content=\"7\">"), std::string::npos);
  const std::string done = html_render_page({.title = "a", .body = "<p>b</p>"});
  EXPECT_EQ(done.find("http-equiv=\"refresh\""), std::string::npos);
  EXPECT_EQ(done.find("src=\"http"), std::string::npos);
}

TEST(StudyPage, MarkdownOfAReport) {
  const fs::path dir = scratch("md");
  write(dir / "fig.svg", "<svg xmlns=\"http://www.w3.org/2000/svg\"/>");
  const std::string md =
      "# Report <x>\n\nRuns: `a<b>`, **bold** and [a link](javascript:alert(1)).\n\n"
      "| | dense | MoE |\n|---|---|---|\n| loss <script> | 1.5 | -0.25 |\n\n"
      "## Reading\n\n- first\n  continued\n- second\n\n![fig](fig.png)\n\n![gone](gone.png)\n";
  const std::string out = study_markdown_html(md, dir.string());
  EXPECT_NE(out.find("<h2>Report &lt;x&gt;</h2>"), std::string::npos);
  EXPECT_NE(out.find("<code>a&lt;b&gt;</code>"), std::string::npos);
  EXPECT_NE(out.find("<strong>bold</strong>"), std::string::npos);
  EXPECT_EQ(out.find("javascript"), std::string::npos) << out;
  EXPECT_NE(out.find("<th>dense</th>"), std::string::npos);
  EXPECT_EQ(out.find("---"), std::string::npos);  // the header's rule is no row
  EXPECT_NE(out.find("<td>loss &lt;script&gt;</td>"), std::string::npos);
  EXPECT_NE(out.find("<td class=\"num\">-0.25</td>"), std::string::npos);
  EXPECT_NE(out.find("<h3>Reading</h3>"), std::string::npos);
  EXPECT_NE(out.find("<li>first continued</li>"), std::string::npos);
  EXPECT_NE(out.find("src=\"data:image/svg+xml;base64,"), std::string::npos);
  EXPECT_NE(out.find("figure gone.png is missing"), std::string::npos);
  EXPECT_EQ(out.find("<script>"), std::string::npos);
  // headings of only '#' or of more than six are headings, not a crash
  const std::string odd = study_markdown_html("#\n\n######## deep\n", dir.string());
  EXPECT_NE(odd.find("<h6>deep</h6>"), std::string::npos) << odd;
  fs::remove_all(dir);
}

TEST(RunPage, SeriesReadInIncrements) {
  const fs::path dir = scratch("series");
  RunSeries r{.dir = dir.string()};
  EXPECT_FALSE(run_series_update(r));  // no run.json: not a run folder
  write(dir / "run.json", R"({"total_steps": 4, "tokens_per_step": 8})");
  write(dir / "metrics.jsonl",
        "{\"step\":1,\"phase\":\"A\",\"loss\":3.0,\"lr\":0.1,\"val_loss\":{\"A\":3.5}}\n"
        "{\"step\":2,\"phase\":\"A\",\"loss\":2.5,\"lr\":0.1,\"expert_load\":[[0.5,0.5]],"
        "\"router\":[{\"layer\":0,\"max_load\":1.0}]}\n{\"step\":3,\"loss\":2.");
  ASSERT_TRUE(run_series_update(r));
  EXPECT_EQ(r.last_step, 2);  // the line still being written waits
  EXPECT_EQ(r.values.at("loss").size(), 2U);
  EXPECT_DOUBLE_EQ(run_series_last(r, "val:A"), 3.5);
  EXPECT_DOUBLE_EQ(run_series_last(r, "max_load:0"), 1.0);
  EXPECT_EQ(r.load_step, 2);
  EXPECT_EQ(run_page_status_of(r).state, RunState::Stopped);
  write(dir / "metrics.jsonl",
        "0,\"forgetting\":{\"metrics\":{\"m_ex\":0.75}}}\n{\"step\":4,\"loss\":1.5}\nnot json\n",
        true);
  run_series_update(r);
  EXPECT_EQ(r.last_step, 4);
  EXPECT_EQ(r.values.at("loss").size(), 4U);
  EXPECT_DOUBLE_EQ(run_series_last(r, "m_ex"), 0.75);
  EXPECT_EQ(r.bad_lines, 1);
  EXPECT_EQ(run_page_status_of(r).state, RunState::Finished);
  // a resume cut the file back: read again from its start
  write(dir / "metrics.jsonl", "{\"step\":1,\"loss\":9.0}\n");
  run_series_update(r);
  EXPECT_EQ(r.last_step, 1);
  EXPECT_EQ(r.values.at("loss").size(), 1U);
  EXPECT_DOUBLE_EQ(run_series_last(r, "loss"), 9.0);
  write(dir / "failed.json", R"j({"step": 1, "reason": "step 1: the loss is not finite (nan)"})j");
  const RunPageStatus st = run_page_status_of(r);
  EXPECT_EQ(st.state, RunState::Failed);
  EXPECT_EQ(st.message, "step 1: the loss is not finite (nan)");
  fs::remove_all(dir);
}

TEST(Html, TicksOverAFewUlpsOrNoRangeEnd) {
  within_10s("html_ticks_linear", [] {
    // a range of one to eight ulps: a step of a fraction of an ulp added to v never moved it
    for (const double base : {1.0, 1e6, -3.7e-5, 0.1}) {
      double hi = base;
      for (int ulps = 1; ulps <= 8; ulps++) {
        hi = std::nextafter(hi, INFINITY);
        for (const int count : {5, 6}) {
          const std::vector<double> t = html_ticks_linear(base, hi, count);
          EXPECT_GE(t.size(), 1U) << base << " + " << ulps << " ulps";
          EXPECT_LE(t.size(), 50U) << base << " + " << ulps << " ulps";
        }
      }
    }
    // empty, inverted and non-finite ranges: the one tick at lo
    EXPECT_EQ(html_ticks_linear(3, 3, 5), std::vector<double>{3});
    EXPECT_EQ(html_ticks_linear(5, 1, 5), std::vector<double>{5});
    EXPECT_EQ(html_ticks_linear(0, INFINITY, 5).size(), 1U);
    EXPECT_EQ(html_ticks_linear(-1e308, 1e308, 5).size(), 1U);
    EXPECT_EQ(html_ticks_linear(NAN, 1, 5).size(), 1U);
    // an ordinary range is untouched
    const std::vector<double> t = html_ticks_linear(0, 1, 5);
    ASSERT_EQ(t.size(), 6U);
    EXPECT_DOUBLE_EQ(t[0], 0.0);
    EXPECT_DOUBLE_EQ(t[3], 0.6);
    EXPECT_DOUBLE_EQ(t[5], 1.0);
    EXPECT_LE(html_ticks_linear(0, 1e6, 1000000).size(), 50U);
  });
}

TEST(Html, ChartsOfFlatOrInvertedRangesAreDrawn) {
  within_10s("html_render_chart", [] {
    // a curve whose values differ by one ulp (a loss that stopped moving), and one of them alone
    const double one_up = std::nextafter(1.0, 2.0);
    HtmlChart flat{.title = "flat"};
    flat.series.push_back({.name = "s", .x_values = {1, 2, 3}, .y_values = {1.0, one_up, 1.0}});
    EXPECT_NE(html_render_chart(flat).find("<path d="), std::string::npos);
    // the x axis too: steps one ulp apart
    const double x0 = 4503599627370496.0;  // 2^52: ulp 1
    HtmlChart steps{.title = "x"};
    steps.series.push_back({.name = "s", .x_values = {x0, x0 + 1}, .y_values = {1, 2}});
    EXPECT_NE(html_render_chart(steps).find("<path d="), std::string::npos);
    // ymin above ymax, and data above a ymax with no ymin
    HtmlChart inverted{.title = "inv", .ymin = 1.0, .ymax = 0.0};
    inverted.series.push_back({.name = "s", .x_values = {1, 2}, .y_values = {0.5, 0.7}});
    EXPECT_NE(html_render_chart(inverted).find("<svg"), std::string::npos);
    HtmlChart below{.title = "below", .ymax = -5.0};
    below.series.push_back({.name = "s", .x_values = {1, 2}, .y_values = {3, 4}});
    EXPECT_NE(html_render_chart(below).find("<svg"), std::string::npos);
    // a log axis over 600 decades labels a few of them, not one per decade
    HtmlChart wide{.title = "wide", .logy = true};
    wide.series.push_back({.name = "s", .x_values = {1, 2}, .y_values = {1e-300, 1e300}});
    const std::string out = html_render_chart(wide);
    EXPECT_LE(count(out, "text-anchor=\"end\""), 14U);
  });
}

TEST(StudyPage, ImagesOnlyFromTheReportsFolder) {
  const fs::path dir = scratch("img");
  fs::create_directories(dir / "report");
  write(dir / "secret.png", "SECRET-BYTES-0123456789");
  write(dir / "report" / "notes.txt", "NOTES-BYTES-0123456789");
  write(dir / "report" / "fig.png", "PNG-BYTES");
  const std::string md = "![a](" + (dir / "secret.png").string() + ")\n\n![b](notes.txt)\n\n" +
                         "![c](../secret.png)\n\n![d](fig.png)\n";
  const std::string out = study_markdown_html(md, (dir / "report").string());
  // the one figure inside the folder is embedded; the absolute path, the text file and the
  // way up are named and not read
  EXPECT_EQ(count(out, "src=\"data:"), 1U) << out;
  EXPECT_EQ(count(out, "is not shown"), 3U) << out;
  EXPECT_EQ(out.find("U0VDUkVU"), std::string::npos);  // base64 of "SECRET"
  EXPECT_EQ(out.find("Tk9URVM"), std::string::npos);   // base64 of "NOTES"
  fs::remove_all(dir);
}

TEST(StudyPage, RunNamesLinkedPercentEncoded) {
  const fs::path dir = scratch("links");
  const std::string odd = "javascript:alert(1)#x%41?y";
  for (const std::string& name : {odd, std::string("lora/seed_1")}) {
    fs::create_directories(dir / name);
    write(dir / name / "run.json", R"({"total_steps": 4})");
    write(dir / name / "view.html", "<p>run</p>");
  }
  StudyPageWriter w;
  w.write({.dir = dir.string(), .runs = {{odd, ""}, {"lora/seed_1", ""}}});
  const std::string out = page_of(dir);
  EXPECT_NE(out.find("<a href=\"javascript%3Aalert%281%29%23x%2541%3Fy/view.html\">"),
            std::string::npos)
      << out;
  EXPECT_EQ(out.find("href=\"javascript:"), std::string::npos);
  EXPECT_NE(out.find("<a href=\"lora/seed_1/view.html\">"), std::string::npos);  // '/' stays
  fs::remove_all(dir);
}

TEST(RunPage, RewrittenFilesAreReadAgain) {
  const fs::path dir = scratch("rewrite");
  RunSeries r{.dir = dir.string()};
  write(dir / "run.json", R"({"total_steps": 4})");
  write(dir / "metrics.jsonl", "{\"step\":1,\"loss\":3.0}\n{\"step\":2,\"loss\":2.0}\n");
  ASSERT_TRUE(run_series_update(r));
  EXPECT_EQ(r.values.at("loss").size(), 2U);
  // rewritten in place (the same inode), larger than before: read again from its start
  write(dir / "metrics.jsonl",
        "{\"step\":1,\"loss\":7.0}\n{\"step\":2,\"loss\":6.0}\n{\"step\":3,\"loss\":5.0}\n");
  run_series_update(r);
  ASSERT_EQ(r.values.at("loss").size(), 3U);
  EXPECT_DOUBLE_EQ(r.values.at("loss")[0].second, 7.0);
  EXPECT_DOUBLE_EQ(run_series_last(r, "loss"), 5.0);
  EXPECT_EQ(r.bad_lines, 0);
  // replaced by another file (a resume's rename) of the same size: read again too
  write(dir / "metrics.new",
        "{\"step\":1,\"loss\":1.0}\n{\"step\":2,\"loss\":1.0}\n{\"step\":3,\"loss\":1.0}\n");
  fs::rename(dir / "metrics.new", dir / "metrics.jsonl");
  run_series_update(r);
  ASSERT_EQ(r.values.at("loss").size(), 3U);
  EXPECT_DOUBLE_EQ(r.values.at("loss")[0].second, 1.0);
  // appended to: only the new line is read
  write(dir / "metrics.jsonl", "{\"step\":4,\"loss\":0.5}\n", true);
  run_series_update(r);
  EXPECT_EQ(r.values.at("loss").size(), 4U);
  // run.json rewritten (a resume with more steps): its new total is seen
  write(dir / "run.json", R"({"total_steps": 8})");
  fs::last_write_time(dir / "run.json",
                      fs::last_write_time(dir / "run.json") + std::chrono::seconds(2));
  run_series_update(r);
  EXPECT_EQ(run_series_total_steps(r), 8);
  EXPECT_EQ(run_page_status_of(r).state, RunState::Stopped);
  fs::remove_all(dir);
}

namespace {

// A queue of runs whose training is `train` (no model is built), with the study's page in DIR.
QueueOptions page_queue(const fs::path& dir, QueueTrain train) {
  QueueOptions o;
  o.train = std::move(train);
  o.page_dir = dir.string();
  return o;
}

std::vector<QueueRun> named_runs(const fs::path& dir, const std::vector<std::string>& names) {
  std::vector<QueueRun> runs;
  for (const std::string& n : names) {
    runs.push_back({.name = n, .experiment = [dir, n] {
                      Experiment x;
                      x.run_dir = (dir / n).string();
                      return x;
                    }});
  }
  return runs;
}

}  // namespace

TEST(StudyPage, QueueStoppedByAnErrorEndsThePage) {
  const fs::path dir = scratch("queue_error");
  const QueueOptions o = page_queue(dir, [](const Experiment&, bool, RunFailure*) -> int {
    throw std::runtime_error("the data folder is gone");
  });
  EXPECT_THROW(queue_run(named_runs(dir, {"a", "b"}), o), std::runtime_error);
  const std::string out = page_of(dir);
  EXPECT_EQ(out.find("http-equiv=\"refresh\""), std::string::npos) << out;
  EXPECT_NE(out.find("stopped: the data folder is gone"), std::string::npos) << out;
  fs::remove_all(dir);
}

TEST(StudyPage, WorkersLeaveThePageToTheLastOne) {
  const fs::path dir = scratch("queue_workers");
  fs::create_directories(dir / "locks");
  QueueOptions o = page_queue(dir, [](const Experiment&, bool, RunFailure*) { return 0; });
  o.workers = true;
  o.lock_dir = (dir / "locks").string();
  // another worker trains b: it holds b's lock (a lock on another open file, as a process's)
  const std::string lock = (dir / "locks" / "b.lock").string();
  const int fd = ::open(lock.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);
  const QueueResult first = queue_run(named_runs(dir, {"a", "b"}), o);
  EXPECT_EQ(first.busy, 1);
  std::string out = page_of(dir);
  EXPECT_NE(out.find("http-equiv=\"refresh\""), std::string::npos) << out;
  EXPECT_NE(out.find("1 run(s) training in other workers"), std::string::npos) << out;
  // that worker is gone: the next one to stop ends the page
  ::close(fd);
  queue_run(named_runs(dir, {"a", "b"}), o);
  out = page_of(dir);
  EXPECT_EQ(out.find("http-equiv=\"refresh\""), std::string::npos) << out;
  EXPECT_NE(out.find("no worker is training the study&#39;s runs any more"), std::string::npos)
      << out;
  fs::remove_all(dir);
}
