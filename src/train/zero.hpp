#pragma once
// ZeRO stage 1 (docs/distributed.md): the AdamW moments split over the ranks of a data-parallel
// run. Every rank still sums the whole gradient (the all-reduce of train/data_parallel), takes
// its norm and clips by it; rank r of P keeps the moments of shard r of the packed space alone
// (AdamW::set_shard) and updates those parameters only; the ranks then gather the updated
// parameters, so that every rank holds the same model. Each element's arithmetic is the
// unsharded update's: the parameters are the bits P ranks compute without ZeRO.
#include <optional>
#include <span>

#include "train/adamw.hpp"
#include "train/collective.hpp"

namespace moelab {

// After every rank's AdamW::update of its shard: every rank's `params` [layout.total] hold every
// shard's update. `grads` [packed], spent by then, carries the gathered shards (no other buffer).
void zero_gather_params(Collective& c, const AdamW<float>& opt, std::span<float> params,
                        std::span<float> grads);

// The two halves of it around the transport: this rank's shard of the parameters into its block
// of `packed` [opt.packed_size()], in moment order; and every parameter from `packed`.
void zero_pack_shard(const AdamW<float>& opt, std::span<const float> params,
                     std::span<float> packed);
void zero_unpack(const AdamW<float>& opt, std::span<const float> packed, std::span<float> params);

// For a checkpoint: on rank 0 an unsharded copy of the optimizer, its moments gathered from every
// rank; nothing on the others (they send their shards). Every rank must call it.
std::optional<AdamW<float>> zero_gather_moments(Collective& c, const AdamW<float>& opt);

}  // namespace moelab
