#pragma once
// Batched greedy decoding with a KV cache: one new token per sequence per step, keys and values
// of earlier positions kept per layer. Sliding-window layers look back `window` positions and
// sinks join every softmax, exactly as in training (tested equal to full recomputation).
#include <cstdint>
#include <span>
#include <vector>

#include "model/model.hpp"

namespace moelab {

class Decoder {
 public:
  // Reads the weights of `model` (which must outlive the decoder); room for `batch` sequences
  // of up to `max_len` tokens.
  Decoder(const Model<float>& model, int64_t batch, int64_t max_len);

  // prompts [batch * prompt_len] (equal lengths); returns [batch * n_new] greedy tokens.
  std::vector<int32_t> greedy(std::span<const int32_t> prompts, int64_t prompt_len, int64_t n_new);

  // Feeds one token per sequence at position pos; returns the logits [batch, V] for the next.
  std::span<const float> step(std::span<const int32_t> tokens, int64_t pos);

  // Feeds n positions per sequence from position 0 at once (tokens [batch * n], sequence-major),
  // filling the cache; returns the logits [batch, n - from, V] of positions from..n-1.
  std::span<const float> prefill(std::span<const int32_t> tokens, int64_t n, int64_t from);

 private:
  const Model<float>& m_;
  const ModelConfig& c_;
  int64_t B_, L_;
  std::vector<std::vector<float>> k_, v_;  // per layer [B, L, KV*hd]
  std::vector<float> x_, xn_, qkv_, att_, tmp_, rstd_, logits_;
  std::vector<float> h_, a_, y_, xe_, rl_, w_;
  std::vector<int32_t> idx_, order_, pos_;
  std::vector<int64_t> off_;
  std::vector<float> cos_, sin_;  // [L, hd/2]
  std::vector<float> lse_, head_in_;

  // One pass over all layers for rows of n positions per sequence starting at pos0 (n = 1: any
  // pos0, attention over the cache; n > 1: pos0 = 0, the tiled attention kernel).
  std::span<const float> run(std::span<const int32_t> tokens, int64_t n, int64_t pos0,
                             int64_t from);
};

}  // namespace moelab
