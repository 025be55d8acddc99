// The HTML view's parts (docs/view.md): escaping, the SVG charts, the markdown of the reports, a
// run folder's series read in increments, and the state a folder shows by itself.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "core/html.hpp"
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
  c.series.push_back({.name = "s", .x = {1, 2, 3, 4, 5}, .y = {1, 2, NAN, 4, 5}});
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
    s.x.push_back(i);
    s.y.push_back(i == 6789 ? 100.0 : 1.0);
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
  EXPECT_EQ(r.s.at("loss").size(), 2U);
  EXPECT_DOUBLE_EQ(run_series_last(r, "val:A"), 3.5);
  EXPECT_DOUBLE_EQ(run_series_last(r, "max_load:0"), 1.0);
  EXPECT_EQ(r.load_step, 2);
  EXPECT_EQ(run_page_status_of(r).state, RunState::Stopped);
  write(dir / "metrics.jsonl",
        "0,\"forgetting\":{\"metrics\":{\"m_ex\":0.75}}}\n{\"step\":4,\"loss\":1.5}\nnot json\n",
        true);
  run_series_update(r);
  EXPECT_EQ(r.last_step, 4);
  EXPECT_EQ(r.s.at("loss").size(), 4U);
  EXPECT_DOUBLE_EQ(run_series_last(r, "m_ex"), 0.75);
  EXPECT_EQ(r.bad_lines, 1);
  EXPECT_EQ(run_page_status_of(r).state, RunState::Finished);
  // a resume cut the file back: read again from its start
  write(dir / "metrics.jsonl", "{\"step\":1,\"loss\":9.0}\n");
  run_series_update(r);
  EXPECT_EQ(r.last_step, 1);
  EXPECT_EQ(r.s.at("loss").size(), 1U);
  EXPECT_DOUBLE_EQ(run_series_last(r, "loss"), 9.0);
  write(dir / "failed.json", R"j({"step": 1, "reason": "step 1: the loss is not finite (nan)"})j");
  const RunPageStatus st = run_page_status_of(r);
  EXPECT_EQ(st.state, RunState::Failed);
  EXPECT_EQ(st.message, "step 1: the loss is not finite (nan)");
  fs::remove_all(dir);
}
