// The bounded fuzz run of `make test`: for every reader, valid seed inputs and a few hundred
// deterministic mutations of them (bit flips, inserted, deleted and duplicated bytes,
// truncations at the interesting offsets, spliced seeds, header fields and numbers replaced by
// extreme values, keys and lines deleted or duplicated), each run through the reader's fuzz
// target in a child process with a watchdog. A crash, a hang, an escaped foreign exception, an
// error message that is empty or spans lines, or an accepted input that breaks the reader's
// promise fails the run; the input is saved for `fuzz_run --replay READER FILE`.
//
// Before the mutations, every file under regressions/READER/ (inputs that once broke a reader)
// runs the same way; regressions/expect.txt can also pin their outcome and message.
//
//   fuzz_run [--inputs N] [--timeout S] [--out DIR] [--regressions DIR] [--verbose] [READER...]
//   fuzz_run --replay READER FILE     run one input in this process (for a debugger)
//   fuzz_run --write-seeds DIR        the seeds as DIR/READER/seed-N (libFuzzer corpora)
//   fuzz_run --self-test              a crash, a hang, a multi-line and a foreign error and an
//                                     invalid result, each caught and named
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <sstream>

#include "fuzz_mutate.hpp"
#include "fuzz_targets.hpp"

namespace fs = std::filesystem;
using namespace moelab::fuzz;

namespace {

// ----------------------------------------------------------------------------
// one input in a child process

struct Options {
  int64_t inputs = 300;  // random mutations per reader, on top of the systematic ones
  unsigned timeout_s = 2;
  std::string out = "fuzz-failures";
  std::string regressions = MOELAB_SOURCE_DIR "/tests/fuzz/regressions";
  bool verbose = false;
  std::vector<std::string> only;
};

// What a child reports through a shared page: its verdict and message.
struct Shared {
  int outcome;
  int names_file;
  char message[4000];
};

struct Result {
  enum Kind { Ok, Bad, Crash, Hang } kind = Ok;
  Verdict verdict;
  std::string detail;  // Crash: the signal or exit status; Hang: the time limit
};

// Exit statuses of a child whose target returned: 40 + the Outcome. Anything else (a signal,
// or a sanitizer's exit status) is a crash.
constexpr int kExitBase = 40;

// Giant allocations become std::bad_alloc (a foreign exception) instead of swapping the
// machine; not under AddressSanitizer, which reserves terabytes of address space.
void limit_memory() {
#if !defined(__SANITIZE_ADDRESS__)
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
  return;
#endif
#endif
  const rlim_t cap = rlim_t(4) << 30;
  const rlimit r{cap, cap};
  setrlimit(RLIMIT_AS, &r);
#endif
}

Result run_child(const Target& t, const Bytes& input, const Options& o, Shared* shared,
                 const std::string& err_path) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) {
    std::perror("fork");
    std::exit(2);
  }
  if (pid == 0) {
    // The child: stderr to a file (shown on failure), the watchdog, the target.
    if (FILE* e = std::freopen(err_path.c_str(), "w", stderr); !e) _exit(3);
    limit_memory();
    alarm(o.timeout_s);
    const Verdict v = t.run(input);
    shared->outcome = int(v.outcome);
    shared->names_file = v.names_file;
    std::snprintf(shared->message, sizeof shared->message, "%s", v.message.c_str());
    std::fflush(stderr);
    _exit(kExitBase + int(v.outcome));
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  Result r;
  if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM) {
    r.kind = Result::Hang;
    r.detail = fmt::format("no answer within {} s", o.timeout_s);
  } else if (WIFSIGNALED(status)) {
    r.kind = Result::Crash;
    r.detail =
        fmt::format("killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  } else if (const int code = WEXITSTATUS(status);
             code < kExitBase || code > kExitBase + int(Outcome::Invalid)) {
    r.kind = Result::Crash;
    r.detail = fmt::format("exit status {}", code);
  } else {
    r.verdict.outcome = Outcome(code - kExitBase);
    r.verdict.message = shared->message;
    r.verdict.names_file = shared->names_file != 0;
    r.kind = r.verdict.ok() ? Result::Ok : Result::Bad;
  }
  return r;
}

// ----------------------------------------------------------------------------
// one reader

// A message as printed on one line: line breaks shown as \n and \r.
std::string one_line(const std::string& m) {
  std::string out;
  for (char c : m) out += c == '\n' ? "\\n" : c == '\r' ? "\\r" : std::string(1, c);
  return out;
}

struct Tally {
  int64_t tried = 0, accepted = 0, refused = 0, unnamed = 0, failed = 0;
};

std::string head_of(const std::string& path, int lines) {
  std::ifstream f(path);
  std::string out, line;
  for (int i = 0; i < lines && std::getline(f, line); i++) out += "    " + line + "\n";
  return out;
}

void save(const std::string& path, const Bytes& b) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

Bytes read_input(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    fmt::print(stderr, "fuzz_run: cannot read {}\n", path);
    std::exit(2);
  }
  return Bytes(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

void fuzz_reader(const Target& t, const Options& o, Shared* shared, const char* self, Tally& n) {
  const std::vector<Bytes> seed = seeds(t.name);
  const std::vector<Mutation> inputs = mutations(seed, t.text, o.inputs, fnv1a(t.name));
  const std::string err_path = scratch_dir() + "/child-stderr.txt";
  for (size_t i = 0; i < inputs.size(); i++) {
    const Mutation& m = inputs[i];
    const Result r = run_child(t, m.bytes, o, shared, err_path);
    n.tried++;
    if (r.kind == Result::Ok) {
      (r.verdict.outcome == Outcome::Accepted ? n.accepted : n.refused)++;
      n.unnamed += !r.verdict.names_file;
      if (!r.verdict.names_file)
        fmt::print("  {} [{}] the message does not name the file: {}\n", t.name, m.name,
                   r.verdict.message);
      else if (o.verbose && r.verdict.outcome == Outcome::Refused)
        fmt::print("  {} [{}] {}\n", t.name, m.name, r.verdict.message);
      continue;
    }
    n.failed++;
    fs::create_directories(o.out);
    const std::string file = (fs::path(o.out) / fmt::format("{}-{}.bin", t.name, i)).string();
    save(file, m.bytes);
    const std::string what =
        r.kind == Result::Hang ? "hang: " + r.detail
        : r.kind == Result::Crash
            ? "crash: " + r.detail
            : fmt::format("{}: {}", outcome_name(r.verdict.outcome), one_line(r.verdict.message));
    fmt::print("FAIL {}: input {} ({}): {}\n  replay: {} --replay {} {}\n", t.name, i, m.name, what,
               self, t.name, fs::absolute(file).string());
    if (r.kind != Result::Bad) fmt::print("{}", head_of(err_path, 12));
  }
}

// ----------------------------------------------------------------------------
// the regression inputs

struct Expectation {
  std::string outcome, text;  // "accepted" or "refused"; a piece of the message ("" = any)
};

// regressions/expect.txt: "READER FILE accepted|refused [text]" per line, '#' comments.
std::map<std::string, Expectation> expectations(const fs::path& dir) {
  std::map<std::string, Expectation> out;
  std::ifstream f(dir / "expect.txt");
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream in(line);
    std::string reader, file;
    Expectation e;
    in >> reader >> file >> e.outcome >> std::ws;
    std::getline(in, e.text);
    out[reader + "/" + file] = e;
  }
  return out;
}

// Runs the regression inputs of reader t, counted into n.
void regressions(const Target& t, const Options& o, Shared* shared, const char* self, Tally& n) {
  const fs::path dir = fs::path(o.regressions) / std::string(t.name);
  if (!fs::is_directory(dir)) return;
  const std::map<std::string, Expectation> expect = expectations(o.regressions);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  const std::string err_path = scratch_dir() + "/child-stderr.txt";
  for (const fs::path& file : files) {
    n.tried++;
    const Result r = run_child(t, read_input(file.string()), o, shared, err_path);
    std::string what;
    if (r.kind == Result::Hang || r.kind == Result::Crash)
      what = (r.kind == Result::Hang ? "hang: " : "crash: ") + r.detail;
    else if (r.kind == Result::Bad)
      what = fmt::format("{}: {}", outcome_name(r.verdict.outcome), one_line(r.verdict.message));
    const auto it = expect.find(std::string(t.name) + "/" + file.filename().string());
    if (what.empty() && it != expect.end()) {
      const Expectation& e = it->second;
      if (outcome_name(r.verdict.outcome) != e.outcome)
        what = fmt::format("{} (expected {}): {}", outcome_name(r.verdict.outcome), e.outcome,
                           one_line(r.verdict.message));
      else if (r.verdict.message.find(e.text) == std::string::npos)
        what = fmt::format("message without \"{}\": {}", e.text, one_line(r.verdict.message));
    }
    if (what.empty()) {
      (r.verdict.outcome == Outcome::Accepted ? n.accepted : n.refused)++;
      continue;
    }
    n.failed++;
    fmt::print("FAIL {}: regression {}: {}\n  replay: {} --replay {} {}\n", t.name,
               file.filename().string(), what, self, t.name, file.string());
    if (r.kind == Result::Hang || r.kind == Result::Crash) fmt::print("{}", head_of(err_path, 12));
  }
}

// ----------------------------------------------------------------------------
// the other modes

const Target& target_named(const std::string& name) {
  if (const Target* t = find_target(name)) return *t;
  std::string known;
  for (const Target& t : targets()) known += " " + std::string(t.name);
  fmt::print(stderr, "fuzz_run: no reader '{}' (readers:{})\n", name, known);
  std::exit(2);
}

int replay(const std::string& name, const std::string& file) {
  const Verdict v = target_named(name).run(read_input(file));
  fmt::print("{}: {}{}{}\n", name, outcome_name(v.outcome), v.message.empty() ? "" : ": ",
             v.message);
  return v.ok() ? 0 : 1;
}

// Every kind of failure, provoked on purpose, must be classified as such.
int self_test(Options o, Shared* shared) {
  o.timeout_s = 1;
  const std::string err_path = scratch_dir() + "/child-stderr.txt";
  const std::pair<std::string_view, std::string> want[] = {
      {"crash", "crash"},
      {"hang", "hang"},
      {"multiline", outcome_name(Outcome::MultiLine)},
      {"foreign", outcome_name(Outcome::Foreign)},
      {"invalid", outcome_name(Outcome::Invalid)}};
  int failed = 0;
  for (const Target& t : self_test_targets()) {
    const Result r = run_child(t, Bytes{'x'}, o, shared, err_path);
    const std::string got = r.kind == Result::Hang    ? "hang"
                            : r.kind == Result::Crash ? "crash"
                                                      : outcome_name(r.verdict.outcome);
    std::string expected;
    for (const auto& [name, outcome] : want)
      if (name == t.name) expected = outcome;
    const bool ok = got == expected;
    failed += !ok;
    fmt::print("self-test {:<10} {} ({}{})\n", t.name, ok ? "caught as" : "MISSED, got", got,
               r.detail.empty() ? "" : ": " + r.detail);
  }
  return failed ? 1 : 0;
}

int write_seeds(const std::string& dir) {
  for (const Target& t : targets()) {
    const fs::path d = fs::path(dir) / std::string(t.name);
    fs::create_directories(d);
    const std::vector<Bytes> s = seeds(t.name);
    for (size_t i = 0; i < s.size(); i++) save((d / fmt::format("seed-{}", i)).string(), s[i]);
    fmt::print("{}: {} seeds in {}\n", t.name, s.size(), d.string());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  const std::vector<std::string> args(argv + 1, argv + argc);
  auto value = [&](size_t& i) {
    if (i + 1 >= args.size()) {
      fmt::print(stderr, "fuzz_run: {} needs a value\n", args[i]);
      std::exit(2);
    }
    return args[++i];
  };
  std::optional<int> done;
  bool self = false;
  scratch_dir();  // before any fork: children write to the parent's folder
  for (size_t i = 0; i < args.size() && !done; i++) {
    if (args[i] == "--replay" && i + 2 < args.size())
      done = replay(args[i + 1], args[i + 2]);
    else if (args[i] == "--self-test")
      self = true;
    else if (args[i] == "--write-seeds")
      done = write_seeds(value(i));
    else if (args[i] == "--inputs")
      o.inputs = std::stoll(value(i));
    else if (args[i] == "--timeout")
      o.timeout_s = unsigned(std::stoul(value(i)));
    else if (args[i] == "--out")
      o.out = value(i);
    else if (args[i] == "--regressions")
      o.regressions = value(i);
    else if (args[i] == "--verbose")
      o.verbose = true;
    else if (args[i].starts_with("-")) {
      fmt::print(stderr, "fuzz_run: unknown option {}\n", args[i]);
      done = 2;
    } else {
      (void)target_named(args[i]);
      o.only.push_back(args[i]);
    }
  }
  if (done) {
    scratch_remove();
    return *done;
  }

  // The page children write their verdicts to.
  void* page =
      mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) {
    std::perror("mmap");
    return 2;
  }
  auto* shared = static_cast<Shared*>(page);
  if (self) {
    const int rc = self_test(o, shared);
    scratch_remove();
    return rc;
  }
  int64_t failed = 0;
  const auto t0 = std::chrono::steady_clock::now();
  // unnamed: refusals whose message does not name the input file; they fail the run too.
  fmt::print("{:<13} {:>6} {:>9} {:>8} {:>8} {:>7} {:>8}\n", "reader", "inputs", "accepted",
             "refused", "unnamed", "failed", "seconds");
  for (const Target& t : targets()) {
    if (!o.only.empty() &&
        std::find(o.only.begin(), o.only.end(), std::string(t.name)) == o.only.end())
      continue;
    const auto r0 = std::chrono::steady_clock::now();
    Tally n;
    regressions(t, o, shared, argv[0], n);
    fuzz_reader(t, o, shared, argv[0], n);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - r0).count();
    fmt::print("{:<13} {:>6} {:>9} {:>8} {:>8} {:>7} {:>8.2f}\n", t.name, n.tried, n.accepted,
               n.refused, n.unnamed, n.failed, s);
    failed += n.failed + n.unnamed;
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fmt::print("{} in {:.1f} s: {}\n", failed ? "FAILED" : "passed", s,
             failed ? fmt::format("{} inputs failed (saved under {})", failed, o.out)
                    : "no crash, hang, foreign exception, multi-line or unnamed error");
  scratch_remove();
  return failed ? 1 : 0;
}
