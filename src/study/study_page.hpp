#pragma once
// A study's page of the HTML view (docs/view.md): STUDY/view.html, one self-contained file with
// the study's runs (finished, running, pending, failed; each linked to its own page,
// RUN/view.html), their losses and M_ex side by side, and, once the study is reported, the
// report's tables, readings and figures (summary.md rendered, its figures inline). The run queue
// (study/queue.hpp) rewrites it at each run's start and end and whenever the running run's page
// is rewritten, with a self-refresh while the queue goes; the reports rewrite it without one.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "train/run_page.hpp"

namespace moelab {

struct StudyPageRun {
  std::string name;  // its folder under the study's
  std::string what;  // "E=8 top-2 seed 1" ("": none)
};

struct StudyPage {
  std::string dir;                  // the study's folder
  std::vector<StudyPageRun> runs;   // the queue's order; run folders found but not listed follow
  int64_t current = -1;             // the run this process trains (index into runs; -1: none)
  bool live = false;                // the queue is going: the page reloads itself
  std::string end;                  // how the queue ended ("" while it goes, or unknown)
  std::string note;                 // while it goes: the time its other runs need, estimated
  std::vector<std::string> report;  // markdown reports to show (summary.md), in order
};

// Writes the study pages of one study folder; keeps the runs' series between writes, so that a
// live page re-reads only what the runs logged since.
class StudyPageWriter {
 public:
  // Writes DIR/view.html; returns its path.
  std::string write(const StudyPage& p);

 private:
  std::map<std::string, RunSeries> runs_;
};

// The study's page after a report (no refresh): its runs as found in DIR, the report `summary`
// (a summary.md). A page that cannot be written is a warning line, never the report's failure.
void study_page_after_report(const std::string& dir, const std::string& summary);

// Markdown as the reports write it (headings, paragraphs, tables, lists, images, `code`,
// **bold**, links) to HTML, every text escaped; an image NAME.png is embedded from `base` (as
// NAME.svg where that exists beside it), one missing is named instead, and so is one that is
// not a .png or .svg inside `base` (an absolute path, "..", a scheme), which is never read.
std::string study_markdown_html(const std::string& md, const std::string& base);

// `moelab study view DIR...`: writes the page of each run folder (run.json) and of each study
// folder with the pages of its runs, from what the folders hold now. Returns the pages' paths.
std::vector<std::string> study_view_write(const std::vector<std::string>& dirs);

}  // namespace moelab
