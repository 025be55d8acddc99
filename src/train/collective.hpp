#pragma once
// What data-parallel training needs of a transport between processes, as an interface: the
// trainer decides what is summed and when (train/data_parallel), a transport (dist/: Open MPI)
// moves the bytes. Every wait is bounded: a rank that does not answer within the timeout is a
// one-line error naming it, never a hang.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace moelab {

class Collective {
 public:
  virtual ~Collective() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Starts summing `data` over the ranks, in place; every rank starts the same sums in the
  // same order. wait_sums() returns when all started sums are done.
  virtual void sum_start(std::span<float> data) = 0;
  virtual void
  progress() = 0;  // lets started sums advance (transports without a thread of their own)
  virtual void wait_sums() = 0;
  // Blocking sums of small vectors (losses, counts).
  virtual void sum(std::span<double> data) = 0;
  virtual void sum(std::span<int64_t> data) = 0;
  // ZeRO-1's gathers (train/zero.hpp). In place: rank r's block of `data` (counts[r] elements,
  // the blocks back to back in rank order) reaches every rank.
  virtual void gather_all(std::span<float> data, std::span<const int64_t> counts) = 0;
  // Every rank's `mine` (counts[r] elements) into rank 0's `all` (the blocks back to back in rank
  // order, rank 0's own already in place; `all` is not read elsewhere).
  virtual void gather_root(std::span<const float> mine, std::span<float> all,
                           std::span<const int64_t> counts) = 0;
  // Fails on every rank, naming the first rank whose value differs from rank 0's `what`.
  virtual void same(const std::string& what, uint64_t value) = 0;
};

// Sums per-layer vectors (routing counts, loads) over the ranks in one call, in place.
template <typename T>
void collective_sum(Collective& c, std::vector<std::vector<T>>& v) {
  std::vector<T> flat;
  for (const auto& row : v) flat.insert(flat.end(), row.begin(), row.end());
  if (flat.empty()) return;
  c.sum(std::span<T>(flat));
  size_t at = 0;
  for (auto& row : v)
    for (T& x : row) x = flat[at++];
}

// The world this process trains in (null: alone), set once by main; train_run and the studies
// built on it take it from here.
void train_set_collective(Collective* c);
Collective* train_collective();
// Whether this process writes the run's files (metrics, checkpoints, reports): rank 0, or alone.
bool train_writer();
// Every rank waits here for the others (nothing alone): after rank 0 wrote what all will read.
void train_barrier();

}  // namespace moelab
