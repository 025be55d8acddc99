#include "train/zero.hpp"

#include <algorithm>
#include <vector>

#include "core/error.hpp"

namespace moelab {

namespace {

// counts [ranks]: the elements of each rank's shard
std::vector<int64_t> shard_counts(const AdamW<float>& opt) {
  std::vector<int64_t> counts;
  for (int r = 0; r < opt.shard_ranks(); r++) {
    const auto [lo, hi] = opt.shard_range(r);
    counts.push_back(hi - lo);
  }
  return counts;
}

void zero_check(const Collective& c, const AdamW<float>& opt) {
  check(opt.shard_ranks() == c.size() && opt.shard_rank() == c.rank(),
        "ZeRO: the optimizer's shard is not this rank's");
}

}  // namespace

void zero_pack_shard(const AdamW<float>& opt, std::span<const float> params,
                     std::span<float> packed) {
  check(int64_t(packed.size()) == opt.packed_size(), "ZeRO: a buffer of the packed space");
  const auto [lo, hi] = opt.shard_range(opt.shard_rank());
  for (const AdamWSpan& s : opt.spans()) {
    const int64_t a = std::max(lo, s.moment), b = std::min(hi, s.moment + s.numel);
    if (a < b) {
      std::copy_n(params.data() + s.param + (a - s.moment), b - a, packed.data() + a);
    }
  }
}

void zero_unpack(const AdamW<float>& opt, std::span<const float> packed, std::span<float> params) {
  check(int64_t(packed.size()) == opt.packed_size(), "ZeRO: a buffer of the packed space");
  for (const AdamWSpan& s : opt.spans()) {
    std::copy_n(packed.data() + s.moment, s.numel, params.data() + s.param);
  }
}

void zero_gather_params(Collective& c, const AdamW<float>& opt, std::span<float> params,
                        std::span<float> grads) {
  zero_check(c, opt);
  zero_pack_shard(opt, params, grads);
  c.gather_all(grads, shard_counts(opt));
  zero_unpack(opt, grads, params);
}

std::optional<AdamW<float>> zero_gather_moments(Collective& c, const AdamW<float>& opt) {
  zero_check(c, opt);
  const std::vector<int64_t> counts = shard_counts(opt);
  if (c.rank() != 0) {
    c.gather_root(opt.m, {}, counts);
    c.gather_root(opt.v, {}, counts);
    return std::nullopt;
  }
  std::vector<float> m(size_t(opt.packed_size())), v(m.size());  // [packed] each
  std::copy(opt.m.begin(), opt.m.end(), m.begin());              // rank 0's shard starts at 0
  std::copy(opt.v.begin(), opt.v.end(), v.begin());
  c.gather_root(opt.m, m, counts);
  c.gather_root(opt.v, v, counts);
  std::optional<AdamW<float>> full(opt);
  full->unshard(std::move(m), std::move(v));
  return full;
}

}  // namespace moelab
