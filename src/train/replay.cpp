#include "train/replay.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>

#include "core/error.hpp"
#include "core/rng.hpp"

namespace moelab {

namespace {

constexpr uint64_t kStreamReservoir = 0x7265706c61790001ull;  // "replay" 1
constexpr uint64_t kStreamDraw = 0x7265706c61790002ull;
constexpr uint64_t kMaxSequence = (uint64_t(1) << 48) - 1;  // the key keeps 48 bits for it

}  // namespace

ReplayMemory::ReplayMemory(uint64_t capacity, uint32_t exit_after, uint64_t seed)
    : capacity_(capacity), exit_after_(exit_after), seed_(seed) {
  check(capacity > 0 && exit_after > 0, "replay memory: capacity and exit limit must be positive");
}

bool ReplayMemory::contains(uint32_t source, uint64_t sequence) const {
  return where_.contains(key(source, sequence));
}

void ReplayMemory::place(size_t i, const ReplaySample& s) {
  samples_[i] = s;
  where_[key(s.source, s.sequence)] = i;
}

// Swaps the last sample into place i.
void ReplayMemory::remove_at(size_t i) {
  where_.erase(key(samples_[i].source, samples_[i].sequence));
  if (i + 1 != samples_.size()) place(i, samples_.back());
  samples_.pop_back();
}

bool ReplayMemory::offer(uint32_t source, uint64_t sequence) {
  check(sequence <= kMaxSequence, "replay memory: sequence index beyond 2^48");
  if (contains(source, sequence)) return true;
  offers_++;
  const ReplaySample s{source, sequence, 0};
  if (samples_.size() < capacity_) {
    samples_.push_back(s);
    where_[key(source, sequence)] = samples_.size() - 1;
    return true;
  }
  // Algorithm R: the offers_-th item takes a random place with probability capacity / offers_.
  const uint64_t j = rng_u64(seed_, kStreamReservoir, offers_) % offers_;
  if (j >= capacity_) return false;
  where_.erase(key(samples_[j].source, samples_[j].sequence));
  place(size_t(j), s);
  return true;
}

std::vector<ReplaySample> ReplayMemory::draw(uint64_t n) {
  check(n <= samples_.size(), "replay memory: a draw larger than the memory");
  // A partial Fisher-Yates shuffle brings n uniformly chosen samples to the front. The modulo's
  // bias is below size / 2^64.
  const uint64_t stream_seed = rng_mix(seed_ + draws_);
  for (uint64_t i = 0; i < n; i++) {
    const uint64_t j = i + rng_u64(stream_seed, kStreamDraw, i) % (samples_.size() - i);
    if (j != i) {
      const ReplaySample a = samples_[i];
      place(size_t(i), samples_[j]);
      place(size_t(j), a);
    }
  }
  draws_++;
  std::vector<ReplaySample> out(samples_.begin(), samples_.begin() + ptrdiff_t(n));
  for (ReplaySample& s : out) s.replays++;
  // From the back, so that every sample swapped into a freed place was already counted.
  for (uint64_t i = n; i-- > 0;) {
    if (++samples_[i].replays < exit_after_) continue;
    remove_at(size_t(i));
    exited_++;
  }
  return out;
}

// ----------------------------------------------------------------------------
// state

nlohmann::json ReplayMemory::to_json(const std::vector<std::string>& sources) const {
  std::string text;
  text.reserve(samples_.size() * 12);
  for (const ReplaySample& s : samples_) {
    check(s.source < sources.size(), "replay memory: a sample of an unnamed source");
    if (!text.empty()) text += ' ';
    text += fmt::format("{}:{}:{}", s.source, s.sequence, s.replays);
  }
  return {{"capacity", capacity_}, {"exit_after", exit_after_}, {"offers", offers_},
          {"draws", draws_},       {"exited", exited_},         {"sources", sources},
          {"samples", text}};
}

void ReplayMemory::from_json(const nlohmann::json& j, const std::vector<std::string>& sources,
                             const std::string& where) {
  auto bad = [&](const std::string& why) { fail(fmt::format("{}: {}", where, why)); };
  auto count = [&](const char* k) {
    if (!j.is_object() || !j.contains(k) || !j[k].is_number_unsigned())
      bad(fmt::format("'{}' is missing or not a count", k));
    return j[k].get<uint64_t>();
  };
  if (count("capacity") != capacity_ || count("exit_after") != exit_after_)
    bad(fmt::format(
        "the memory was built with replay_memory = {} and replay_exit = {}, the config now says "
        "{} and {}",
        count("capacity"), count("exit_after"), capacity_, exit_after_));
  const uint64_t offers = count("offers"), draws = count("draws"), exited = count("exited");
  if (!j.contains("sources") || !j["sources"].is_array() || !j.contains("samples") ||
      !j["samples"].is_string())
    bad("'sources' or 'samples' is missing or mistyped");
  std::vector<uint32_t> map;  // the state's source index -> ours
  for (const auto& name : j["sources"]) {
    const auto it =
        name.is_string() ? std::find(sources.begin(), sources.end(), name) : sources.end();
    if (it == sources.end())
      bad(fmt::format("the memory holds sequences of {}, not a subset of this run", name.dump()));
    map.push_back(uint32_t(it - sources.begin()));
  }
  std::vector<ReplaySample> samples;
  const std::string& text = j["samples"].get_ref<const std::string&>();
  const char *p = text.data(), *end = p + text.size();
  while (p < end) {
    uint64_t f[3];
    for (int k = 0; k < 3; k++) {
      const auto r = std::from_chars(p, end, f[k]);
      if (r.ec != std::errc() || (k < 2 && (r.ptr == end || *r.ptr != ':')))
        bad(fmt::format("'samples' is malformed at character {}", p - text.data()));
      p = r.ptr + (k < 2 ? 1 : 0);
    }
    if (p < end && *p++ != ' ') bad("'samples' is malformed (entries are separated by spaces)");
    if (f[0] >= map.size() || f[1] > kMaxSequence || f[2] >= exit_after_)
      bad(fmt::format("'samples' holds an impossible entry {}:{}:{}", f[0], f[1], f[2]));
    samples.push_back({map[f[0]], f[1], uint32_t(f[2])});
  }
  if (samples.size() > capacity_) bad("'samples' holds more than the capacity");
  samples_.clear();
  where_.clear();
  for (const ReplaySample& s : samples) {
    if (where_.contains(key(s.source, s.sequence))) bad("'samples' holds a sequence twice");
    samples_.push_back(s);
    where_[key(s.source, s.sequence)] = samples_.size() - 1;
  }
  offers_ = offers, draws_ = draws, exited_ = exited;
}

}  // namespace moelab
