#include <fmt/format.h>
#include <mpi.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/error.hpp"
#include "dist/dist.hpp"

namespace moelab {

namespace {

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

double timeout_s() {
  const char* v = std::getenv("MOELAB_DIST_TIMEOUT");
  if (!v) return 600;
  char* end = nullptr;
  const double t = std::strtod(v, &end);
  if (end == v || *end || !(t > 0))
    fail(fmt::format("MOELAB_DIST_TIMEOUT: not a number of seconds > 0 ({})", v));
  return t;
}

// ----------------------------------------------------------------------------
// the world over MPI_COMM_WORLD; every wait polls with short sleeps (a waiting rank leaves its
// core to the others) and ends after the timeout with one line naming who did not answer

class MpiWorld final : public Collective {
 public:
  MpiWorld() : timeout_(timeout_s()) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void sum_start(std::span<float> data) override {
    for (size_t at = 0; at < data.size(); at += kChunk) {  // MPI counts are int
      const int n = int(std::min(kChunk, data.size() - at));
      MPI_Request r;
      MPI_Iallreduce(MPI_IN_PLACE, data.data() + at, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r);
      pending_.push_back(r);
    }
  }
  void progress() override {
    int done = 0;
    if (!pending_.empty())
      MPI_Testall(int(pending_.size()), pending_.data(), &done, MPI_STATUSES_IGNORE);
  }
  void wait_sums() override {
    wait(pending_, "the gradient sum");
    pending_.clear();
  }
  void sum(std::span<double> data) override { small(data.data(), int(data.size()), MPI_DOUBLE); }
  void sum(std::span<int64_t> data) override { small(data.data(), int(data.size()), MPI_INT64_T); }

  // One broadcast per rank's block, in chunks as the sums (MPI counts are int; an all-gather's
  // displacements would be int too).
  void gather_all(std::span<float> data, std::span<const int64_t> counts) override {
    check(int64_t(counts.size()) == size_, "gather: one count per rank");
    std::vector<MPI_Request> reqs;
    size_t at = 0;
    for (int k = 0; k < size_; k++) {
      const size_t n = size_t(counts[size_t(k)]);
      check(at + n <= data.size(), "gather: the blocks overrun the buffer");
      for (size_t c = 0; c < n; c += kChunk) {
        MPI_Request r;
        MPI_Ibcast(data.data() + at + c, int(std::min(kChunk, n - c)), MPI_FLOAT, k, MPI_COMM_WORLD,
                   &r);
        reqs.push_back(r);
      }
      at += n;
    }
    check(at == data.size(), "gather: the blocks do not fill the buffer");
    wait(reqs, "the gather of the updated parameters (ZeRO-1)");
  }
  void gather_root(std::span<const float> mine, std::span<float> all,
                   std::span<const int64_t> counts) override {
    check(int64_t(counts.size()) == size_, "gather: one count per rank");
    check(int64_t(mine.size()) == counts[size_t(rank_)], "gather: this rank's block size");
    constexpr int kTag = 7322;
    std::vector<MPI_Request> reqs;
    size_t at = 0;
    for (int k = 0; k < size_; k++) {
      const size_t n = size_t(counts[size_t(k)]);
      for (size_t c = 0; c < n && k != 0 && (rank_ == 0 || rank_ == k); c += kChunk) {
        MPI_Request r;
        const int len = int(std::min(kChunk, n - c));
        if (rank_ == 0) {
          check(at + n <= all.size(), "gather: the blocks overrun the buffer");
          MPI_Irecv(all.data() + at + c, len, MPI_FLOAT, k, kTag, MPI_COMM_WORLD, &r);
        } else {
          MPI_Isend(mine.data() + c, len, MPI_FLOAT, 0, kTag, MPI_COMM_WORLD, &r);
        }
        reqs.push_back(r);
      }
      at += n;
    }
    wait(reqs, "the gather of the optimizer's moments for a checkpoint (ZeRO-1)");
  }

  void same(const std::string& what, uint64_t value) override {
    std::vector<uint64_t> all(static_cast<size_t>(size_));
    std::vector<MPI_Request> r(1);
    MPI_Iallgather(&value, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD, &r[0]);
    wait(r, "the start-up check");
    for (int k = 1; k < size_; k++)
      if (all[size_t(k)] != all[0])
        fail(fmt::format("rank {}: {} differs from rank 0's: every process must run the same", k,
                         what));
  }

 private:
  static constexpr size_t kChunk = size_t(1) << 28;

  template <typename T>
  void small(T* data, int n, MPI_Datatype type) {
    std::vector<MPI_Request> r(1);
    MPI_Iallreduce(MPI_IN_PLACE, data, n, type, MPI_SUM, MPI_COMM_WORLD, &r[0]);
    wait(r, "a sum of the step's statistics");
  }

  void wait(std::vector<MPI_Request>& reqs, const std::string& what) {
    // polling drives the transfer: the first millisecond without pauses, then short sleeps
    const auto t0 = std::chrono::steady_clock::now();
    const auto busy = t0 + std::chrono::milliseconds(1);
    const auto until = t0 + std::chrono::duration<double>(timeout_);
    for (;;) {
      int done = 0;
      MPI_Testall(int(reqs.size()), reqs.data(), &done, MPI_STATUSES_IGNORE);
      if (done) return;
      const auto now = std::chrono::steady_clock::now();
      if (now > until) stuck(what);
      if (now > busy) std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  // Who answers a ping within a second: the ranks that do not are named, and the job ends.
  [[noreturn]] void stuck(const std::string& what) {
    constexpr int kTag = 7321;
    std::vector<MPI_Request> sends, recvs;
    std::vector<int> from, ping(static_cast<size_t>(size_), rank_);
    for (int k = 0; k < size_; k++) {
      if (k == rank_) continue;
      MPI_Request s, r;
      MPI_Isend(&ping[size_t(k)], 1, MPI_INT, k, kTag, MPI_COMM_WORLD, &s);
      MPI_Irecv(&ping[size_t(k)], 1, MPI_INT, k, kTag, MPI_COMM_WORLD, &r);
      sends.push_back(s), recvs.push_back(r), from.push_back(k);
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));
    std::string missing;
    for (size_t i = 0; i < recvs.size(); i++) {
      int done = 0;
      MPI_Test(&recvs[i], &done, MPI_STATUS_IGNORE);
      if (!done) missing += (missing.empty() ? "" : ", ") + std::to_string(from[i]);
    }
    const std::string who =
        missing.empty() ? "every rank answered a ping afterwards (one was paused or busy"
                        : fmt::format("no answer from rank{} {} (dead, stuck, or busy",
                                      missing.find(',') == std::string::npos ? "" : "s", missing);
    std::fprintf(stderr,
                 "moelab: error: rank %d: %s did not complete within %.0f s: %s longer than "
                 "MOELAB_DIST_TIMEOUT); stopping every rank\n",
                 rank_, what.c_str(), timeout_, who.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    std::_Exit(1);
  }

  int rank_ = 0, size_ = 1;
  double timeout_;
  std::vector<MPI_Request> pending_;
};

std::unique_ptr<MpiWorld> g_world;
bool g_started = false;

}  // namespace

Collective* dist_init(int* argc, char*** argv) {
  if (!launched_by_mpi()) return nullptr;
  // Open MPI's nonblocking all-reduce of an in-place buffer may take a binomial tree (2 log2 P
  // full-size messages per rank); the ring moves 2 (P-1)/P of the bytes. A user's choice stays.
  setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "1", 0);
  int provided = 0;
  MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  g_started = true;
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size == 1) return nullptr;
  g_world = std::make_unique<MpiWorld>();
  return g_world.get();
}

void dist_finish() {
  if (g_started) MPI_Finalize();
  g_started = false;
}

void dist_abort(int code) {
  if (g_world) MPI_Abort(MPI_COMM_WORLD, code);
}

}  // namespace moelab
