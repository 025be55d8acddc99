// The report toolkit's templates: placeholders filled, a missing value or an unknown template a
// one-line error naming both, every file of src/study/templates embedded byte for byte, and a
// figure's gnuplot script rendered from them.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <string>

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "study/report_kit.hpp"

using namespace moelab;
namespace fs = std::filesystem;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ReportKit, FillsEveryPlaceholder) {
  EXPECT_EQ(template_fill("t", "a {{x}} b {{y}}{{x}}\n", {{"x", "1"}, {"y", "{{z}}"}}),
            "a 1 b {{z}}1\n");
  EXPECT_EQ(template_fill("t", "no placeholder", {}), "no placeholder");
  EXPECT_EQ(template_fill("t", "", {{"x", "1"}}), "");
}

TEST(ReportKit, MissingValueNamesTemplateAndPlaceholder) {
  EXPECT_EQ(error_of([] {
              template_fill("doc.md", "a {{x}} {{y}}", {{"x", "1"}});
            }),
            "template doc.md: no value for {{y}}");
  EXPECT_EQ(error_of([] {
              template_fill("doc.md", "a {{x", {{"x", "1"}});
            }),
            "template doc.md: '{{' without '}}'");
  EXPECT_EQ(error_of([] { template_render("nothing.md", {}); }),
            "template nothing.md: not among the embedded templates (src/study/templates)");
}

TEST(ReportKit, EmbedsEveryTemplateFile) {
  const fs::path dir = fs::path(MOELAB_SOURCE_DIR) / "src/study/templates";
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string file = e.path().filename().string();
    ASSERT_TRUE(file.ends_with(".in")) << file;
    const std::string name = file.substr(0, file.size() - 3);
    bool found = false;
    for (const auto& [n, text] : template_table()) {
      if (n == name) {
        EXPECT_EQ(text, file_read(e.path().string())) << name;
        found = true;
      }
    }
    EXPECT_TRUE(found) << name;
    files++;
  }
  EXPECT_EQ(files, template_table().size());
}

TEST(ReportKit, PlotScriptFromTemplates) {
  const fs::path dir = fs::temp_directory_path() / "moelab_test_report_kit";
  fs::create_directories(dir);
  PlotChart c;
  c.title = "a \"b\"", c.xlabel = "x", c.ylabel = "y";
  c.series.push_back({"s", {1, 2}, {3, 4}, {}, {}, 2, 1});
  c.marker_x = 1.5, c.marker_label = "A -> B";
  c.logy = true, c.ymin = 0;
  ASSERT_TRUE(plot_write(c, (dir / "fig").string(), false));
  const std::string g = file_read((dir / "fig.gp").string());
  fs::remove_all(dir);
  EXPECT_TRUE(
      g.starts_with("# a \"b\" (moelab report; run: gnuplot fig.gp)\n$s0 << EOD\n1 3\n"
                    "2 4\nEOD\nset title \"a \\\"b\\\"\" noenhanced\n"))
      << g;
  EXPECT_NE(g.find("set logscale y\nset yrange [0:*]\nset arrow from 1.5, graph 0 to 1.5, "
                   "graph 1 nohead dt 2 lc rgb '#888888'\nset label \"A -> B\" at 1.5,"),
            std::string::npos)
      << g;
  EXPECT_NE(g.find("plot $s0 using 1:2 with lines lw 2 dt 2 lc rgb '#E69F00' title \"s\"\n"),
            std::string::npos)
      << g;
  EXPECT_TRUE(
      g.ends_with("set output \"fig.svg\"\nplot $s0 using 1:2 with lines lw 2 dt 2 lc "
                  "rgb '#E69F00' title \"s\"\nunset output\n"))
      << g;
}

}  // namespace
