#pragma once
// Batched greedy decoding with a KV cache: one new token per sequence per step, keys and values
// of earlier positions kept per layer. It runs the model's own blocks (the code training runs),
// with a cache. Sliding-window layers look back `window` positions and
// sinks join every softmax, exactly as in training (tested equal to full recomputation).
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/model.hpp"

namespace moelab {

class Decoder {
 public:
  // Reads the weights of `model` (which must outlive the decoder); room for `batch` sequences
  // of up to `max_len` tokens.
  Decoder(const Model<float>& model, int64_t batch, int64_t max_len);

  // prompts [batch * prompt_len] (equal lengths); returns [batch * n_new] greedy tokens, the
  // argmax over ids [0, n_ids) (0: the whole vocabulary; fewer when it is padded beyond the
  // tokenizer's).
  std::vector<int32_t> greedy(std::span<const int32_t> prompts, int64_t prompt_len, int64_t n_new,
                              int64_t n_ids = 0);

  // Feeds one token per sequence at position pos; returns the logits [batch, V] for the next.
  std::span<const float> step(std::span<const int32_t> tokens, int64_t pos);

  // Feeds n positions per sequence from position 0 at once (tokens [batch * n], sequence-major),
  // filling the cache; returns the logits [batch, n - from, V] of positions from..n-1.
  std::span<const float> prefill(std::span<const int32_t> tokens, int64_t n, int64_t from);

  // As prefill, with the wanted positions [from[b], to[b]) given per sequence; the head runs in
  // chunks of sequences and visit(b, logits [to[b] - from[b], V]) sees each sequence's logits,
  // so memory stays bounded at any vocabulary size. visit runs on several threads at once, each
  // call for a different sequence.
  // With `slots`, the sequences (as many as from.size()) fill those cache slots instead of
  // 0..batch-1: a server prefills the prompts that just arrived, padded to one length n (a
  // padded position is overwritten by the sequence's own next token before anything reads it).
  void prefill_each(std::span<const int32_t> tokens, int64_t n, std::span<const int64_t> from,
                    std::span<const int64_t> to,
                    const std::function<void(int64_t, std::span<const float>)>& visit,
                    std::span<const int64_t> slots = {});

  // ---- slots: sequences that come and go at their own positions (continuous batching)
  // Each of the `batch` cache slots holds one sequence. prefill_slot fills slot `slot` from
  // position 0 with tokens [n] and hands the logits of positions from..n-1 to visit(t, logits
  // [rows, V]) in chunks (t the first chunk position), memory bounded at any vocabulary.
  void prefill_slot(int64_t slot, std::span<const int32_t> tokens, int64_t from,
                    const std::function<void(int64_t, std::span<const float>)>& visit);
  // Feeds tokens[i] at position pos[i] of slot slot[i] (distinct slots, positions after what
  // each slot holds); returns the logits [A, V] for each sequence's next token.
  std::span<const float> step_slots(std::span<const int32_t> tokens, std::span<const int64_t> pos,
                                    std::span<const int64_t> slot);

  // ---- rows: decoding steps and prompt chunks in one pass (a server's chunked prefill)
  // Feeds tokens[i] at position pos[i] of slot slot[i] (all [R]). A slot may come several times,
  // at distinct positions: a chunk of its prompt. Every row sees the keys and values of its
  // slot's positions up to its own: those in the cache and those of the rows of this pass, so
  // the positions of a slot before pos[i] must be in the cache already or among the rows. Each
  // row runs the decoding step's attention (attention_decode), so a row's result does not
  // depend on which other rows share the pass. The logits of the rows `want` (indices into the
  // rows, increasing) go to visit(k, logits [rows, V]) in chunks of rows (k: the index into want
  // of the chunk's first row), memory bounded at any vocabulary.
  void forward_rows(std::span<const int32_t> tokens, std::span<const int64_t> pos,
                    std::span<const int64_t> slot, std::span<const int64_t> want,
                    const std::function<void(int64_t, std::span<const float>)>& visit);

  int64_t batch() const { return B_; }
  // Bytes of the KV cache: keys and values of every layer, slot and position.
  int64_t cache_bytes() const {
    return 2 * int64_t(cache_.size()) * B_ * L_ * c_.num_key_value_heads * c_.head_dim *
           int64_t(sizeof(float));
  }
  int64_t max_len() const { return L_; }
  Device& device() const { return dev_; }

 private:
  const Model<float>& m_;
  const ModelConfig& c_;
  Device& dev_;
  int64_t B_, L_;
  std::vector<KvCache<float>> cache_;  // per layer
  // one set of block buffers serves every layer: nothing is kept for a backward pass
  AttentionBlock<float>::Acts attn_acts_;
  AttentionBlock<float>::Work attn_work_;
  FfnBlock<float>::Acts ffn_acts_;
  FfnBlock<float>::Work ffn_work_;
  Buffer<float> x_;          // [B*n, d] the residual stream
  Buffer<float> wbuf_;       // [rebuild_size] a rebuilt DeRS expert
  Buffer<float> cos_, sin_;  // [L, hd/2]
  Buffer<float> head_in_, xn_, rstd_, logits_;

  // One pass over all layers for rows of n positions per sequence starting at pos0 (n = 1: any
  // pos0, attention over the cache; n > 1: pos0 = 0, the tiled attention kernel).
  std::span<const float> run(std::span<const int32_t> tokens, int64_t n, int64_t pos0,
                             int64_t from);
  void layers(std::span<const int32_t> tokens, Rows r);    // leaves x_ [r.B*r.n, d]
  std::span<const float> head(int64_t n, int64_t from);    // logits of positions from..n-1
  void head_rows(std::span<const int64_t> rows);           // logits_ [rows, V] of rows of x_
  void slots_check(std::span<const int64_t> slots) const;  // within the cache, none twice
};

}  // namespace moelab
