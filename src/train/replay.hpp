#pragma once
// The memory of focused-stochasticity replay (docs/methods.md §5.4, Liao et al.): sequences
// already trained on, named by (source, sequence index) rather than copied, each with the number
// of times it was replayed. A replay draws distinct samples uniformly at random; a sample leaves
// after `exit_after` replays. A bounded memory keeps a uniform sample of everything offered
// (reservoir sampling). Every random choice is a function of (seed, counter), and the whole state
// (samples in order, counters) round-trips through JSON, so a resumed run draws what an unbroken
// one draws.
#include <cstdint>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

namespace moelab {

struct ReplaySample {
  uint32_t source = 0;    // which subset (an index the owner assigns)
  uint64_t sequence = 0;  // the sequence's index in that subset's loader
  uint32_t replays = 0;   // how often it was replayed so far (< exit_after while in memory)
};

class ReplayMemory {
 public:
  ReplayMemory(uint64_t capacity, uint32_t exit_after, uint64_t seed);

  // A sequence just trained on. One already in memory is not added twice. Below capacity it is
  // added; at capacity it replaces a random sample with probability capacity / (offers so far),
  // Vitter's algorithm R. Returns whether it is in memory now.
  bool offer(uint32_t source, uint64_t sequence);

  // n distinct samples chosen uniformly at random (n <= size()), in the order drawn. Each one's
  // replay count goes up by one, and those that reach exit_after leave the memory. The returned
  // copies carry the new counts.
  std::vector<ReplaySample> draw(uint64_t n);

  uint64_t size() const { return samples_.size(); }
  uint64_t capacity() const { return capacity_; }
  uint32_t exit_after() const { return exit_after_; }
  bool contains(uint32_t source, uint64_t sequence) const;
  std::span<const ReplaySample> samples() const { return samples_; }
  uint64_t offers() const { return offers_; }  // new sequences offered (duplicates not counted)
  uint64_t draws() const { return draws_; }    // replays drawn
  uint64_t exited() const { return exited_; }  // samples that left after exit_after replays

  // {"capacity", "exit_after", "offers", "draws", "exited", "sources": [names], "samples":
  // "SOURCE:SEQUENCE:REPLAYS ..."} (one string: a large memory stays one line of the state).
  // sources[i] names source i.
  nlohmann::json to_json(const std::vector<std::string>& sources) const;
  // Restores a memory written by to_json, mapping its source names onto `sources`. Refuses, with
  // one line naming `where`, another capacity or exit limit, a source not in `sources`, and any
  // malformed field.
  void from_json(const nlohmann::json& j, const std::vector<std::string>& sources,
                 const std::string& where);

 private:
  static uint64_t key(uint32_t source, uint64_t sequence) {
    return (uint64_t(source) << 48) | sequence;
  }
  void remove_at(size_t i);
  void place(size_t i, const ReplaySample& s);

  uint64_t capacity_;
  uint32_t exit_after_;
  uint64_t seed_;
  uint64_t offers_ = 0, draws_ = 0, exited_ = 0;
  std::vector<ReplaySample> samples_;
  std::unordered_map<uint64_t, size_t> where_;  // key -> index in samples_
};

}  // namespace moelab
