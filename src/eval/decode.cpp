#include "eval/decode.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.hpp"
#include "core/profile.hpp"
#include "eval/metrics.hpp"
#include "kernels/parallel.hpp"

namespace moelab {

using namespace kernels;

Decoder::Decoder(const Model<float>& model, int64_t batch, int64_t max_len)
    : m_(model), c_(model.cfg), dev_(model.device()), B_(batch), L_(max_len) {
  check(batch >= 1 && max_len >= 1, "decoder: batch and max_len must be positive");
  if (max_len > c_.max_position_embeddings)
    fail(fmt::format("decoder: {} positions exceed the model's max_position_embeddings ({})",
                     max_len, c_.max_position_embeddings));
  const int64_t KV = c_.num_key_value_heads, hd = c_.head_dim;
  cache_.resize(size_t(c_.num_hidden_layers));
  for (auto& kv : cache_) {
    kv.K.resize(dev_, B_ * L_ * KV * hd);
    kv.V.resize(dev_, B_ * L_ * KV * hd);
    kv.L = L_;
  }
  cos_.resize(dev_, L_ * hd / 2), sin_.resize(dev_, L_ * hd / 2);
  RopeParams rp{c_.rope_theta, c_.yarn_factor, c_.yarn_beta_fast, c_.yarn_beta_slow,
                c_.yarn_original_context};
  dev_.ops<float>().rope_tables(cos_.data(), sin_.data(), L_, hd, rp);
}

std::span<const float> Decoder::step(std::span<const int32_t> tokens, int64_t t) {
  return run(tokens, 1, t, 0);
}

std::span<const float> Decoder::prefill(std::span<const int32_t> tokens, int64_t n, int64_t from) {
  check(n >= 1 && from >= 0 && from < n, "decoder prefill: bad range");
  return run(tokens, n, 0, from);
}

std::span<const float> Decoder::run(std::span<const int32_t> tokens, int64_t n, int64_t t0,
                                    int64_t from) {
  check(int64_t(tokens.size()) == B_ * n && t0 >= 0 && t0 + n <= L_ && (n == 1 || t0 == 0),
        "decoder: batch, positions or range out of range");
  layers(tokens, Rows{B_, n, t0});
  return head(n, from);
}

void Decoder::slots_check(std::span<const int64_t> slots) const {
  std::vector<bool> used(size_t(B_), false);
  for (int64_t s : slots) {
    check(s >= 0 && s < B_ && !used[size_t(s)], "decoder: a slot out of range or repeated");
    used[size_t(s)] = true;
  }
}

std::span<const float> Decoder::step_slots(std::span<const int32_t> tokens,
                                           std::span<const int64_t> pos,
                                           std::span<const int64_t> slot) {
  const int64_t A = int64_t(tokens.size());
  check(A >= 1 && A <= B_ && int64_t(pos.size()) == A && int64_t(slot.size()) == A,
        "decoder: one position and slot per token");
  slots_check(slot);
  for (int64_t t : pos) check(t >= 0 && t < L_, "decoder: a position beyond the cache");
  layers(tokens, Rows{A, 1, 0, pos.data(), slot.data()});
  std::vector<int64_t> rows(static_cast<size_t>(A));
  for (int64_t i = 0; i < A; i++) rows[size_t(i)] = i;
  head_rows(rows);
  return logits_.span().first(size_t(A * c_.vocab_size));
}

void Decoder::forward_rows(std::span<const int32_t> tokens, std::span<const int64_t> pos,
                           std::span<const int64_t> slot, std::span<const int64_t> want,
                           const std::function<void(int64_t, std::span<const float>)>& visit) {
  const int64_t R = int64_t(tokens.size());
  check(R >= 1 && int64_t(pos.size()) == R && int64_t(slot.size()) == R,
        "decoder: one position and slot per row");
  std::vector<std::pair<int64_t, int64_t>> at(static_cast<size_t>(R));  // [R] (slot, position)
  for (int64_t i = 0; i < R; i++) {
    const int64_t s = slot[size_t(i)], t = pos[size_t(i)];
    check(s >= 0 && s < B_ && t >= 0 && t < L_, "decoder: a row's slot or position out of range");
    at[size_t(i)] = {s, t};
  }
  std::sort(at.begin(), at.end());
  check(std::adjacent_find(at.begin(), at.end()) == at.end(),
        "decoder: two rows at one position of one slot");
  for (size_t k = 0; k < want.size(); k++)
    check(want[k] >= 0 && want[k] < R && (k == 0 || want[k] > want[k - 1]),
          "decoder: the rows wanted must be increasing row indices");
  layers(tokens, Rows{R, 1, 0, pos.data(), slot.data()});
  // the head in chunks of rows, so the logits stay within about 64 MB at any vocabulary
  const int64_t V = c_.vocab_size, chunk = std::max<int64_t>(1, (int64_t(1) << 24) / V);
  for (int64_t k0 = 0; k0 < int64_t(want.size()); k0 += chunk) {
    const int64_t m = std::min<int64_t>(chunk, int64_t(want.size()) - k0);
    head_rows(want.subspan(size_t(k0), size_t(m)));
    visit(k0, logits_.span().first(size_t(m * V)));
  }
}

void Decoder::prefill_slot(int64_t slot, std::span<const int32_t> tokens, int64_t from,
                           const std::function<void(int64_t, std::span<const float>)>& visit) {
  const int64_t n = int64_t(tokens.size());
  check(slot >= 0 && slot < B_ && n >= 1 && n <= L_ && from >= 0 && from <= n,
        "decoder prefill: slot, length or range out of range");
  layers(tokens, Rows{1, n, 0, nullptr, &slot});
  const int64_t V = c_.vocab_size, chunk = std::max<int64_t>(1, (int64_t(1) << 24) / V);
  std::vector<int64_t> rows;
  for (int64_t t0 = from; t0 < n; t0 += chunk) {
    rows.clear();
    for (int64_t t = t0; t < std::min(n, t0 + chunk); t++) rows.push_back(t);
    head_rows(rows);
    visit(t0, logits_.span().first(rows.size() * size_t(V)));
  }
}

void Decoder::layers(std::span<const int32_t> tokens, Rows r) {
  // the embedding reads row `id` of the table: an id outside it would read past the weights
  const int32_t V = int32_t(c_.vocab_size);
  check(std::all_of(tokens.begin(), tokens.end(), [V](int32_t t) { return t >= 0 && t < V; }),
        "decoder: a token id outside the model's vocabulary");
  wbuf_.grow(dev_, m_.rebuild_size());
  const Ctx<float> c = m_.ctx_infer(wbuf_.data());
  const auto& attn = m_.attention_blocks();
  const auto& ffn = m_.ffn_blocks();
  const int64_t N = r.N();
  // Buffers only grow: prefill (B*n rows) and steps (B rows) alternate, and shrinking and
  // regrowing would zero-fill them again for every batch.
  x_.grow(dev_, N * c_.hidden_size);
  c.op.embedding_forward(x_.data(), tokens.data(), c.P + m_.blocks().embed, N, c_.hidden_size);
  for (size_t l = 0; l < attn.size(); l++) {
    attn[l].reserve(dev_, attn_acts_, attn_work_, N, false);
    attn[l].forward(c, attn_acts_, attn_work_, x_.data(), x_.data(), r, cos_.data(), sin_.data(),
                    &cache_[l]);
    ffn[l].reserve(dev_, ffn_acts_, ffn_work_, N, false);
    ffn[l].forward(c, ffn_acts_, ffn_work_, x_.data(), x_.data(), N);
  }
}

std::span<const float> Decoder::head(int64_t n, int64_t from) {
  std::vector<int64_t> rows;  // the positions whose logits are wanted
  rows.reserve(size_t(B_ * (n - from)));
  for (int64_t b = 0; b < B_; b++)
    for (int64_t t = from; t < n; t++) rows.push_back(b * n + t);
  head_rows(rows);
  return logits_.span().first(rows.size() * size_t(c_.vocab_size));
}

void Decoder::head_rows(std::span<const int64_t> rows) {
  ProfileScope prof(dev_.profile, "head");
  const Ops<float>& op = dev_.ops<float>();
  const float* P = m_.params.data();
  const int64_t d = c_.hidden_size, V = c_.vocab_size, m = int64_t(rows.size());
  head_in_.grow(dev_, m * d);
  std::vector<int64_t> from(rows.size()), to(rows.size());  // [m] each row's first element
  for (size_t r = 0; r < rows.size(); r++) {
    from[r] = rows[r] * d;
    to[r] = int64_t(r) * d;
  }
  op.rows_copy(head_in_.data(), to.data(), 1, x_.data(), from.data(), m, d);
  xn_.grow(dev_, m * d), rstd_.grow(dev_, m);
  op.rmsnorm_forward(xn_.data(), rstd_.data(), head_in_.data(), P + m_.blocks().norm, m, d,
                     c_.rms_norm_eps);
  logits_.grow(dev_, m * V);
  op.linear_forward(logits_.data(), xn_.data(), P + m_.blocks().lm_head, nullptr, m, d, V,
                    WLayout::OutIn, dev_.precision);
}

void Decoder::prefill_each(std::span<const int32_t> tokens, int64_t n,
                           std::span<const int64_t> from, std::span<const int64_t> to,
                           const std::function<void(int64_t, std::span<const float>)>& visit,
                           std::span<const int64_t> slots) {
  const int64_t B = int64_t(from.size());
  check(int64_t(to.size()) == B && (slots.empty() ? B == B_ : int64_t(slots.size()) == B),
        "decoder prefill: one range (and slot) per sequence");
  check(B <= B_ && int64_t(tokens.size()) == B * n && n >= 1 && n <= L_,
        "decoder: batch, positions or range out of range");
  for (int64_t b = 0; b < B; b++)
    check(from[size_t(b)] >= 0 && from[size_t(b)] < to[size_t(b)] && to[size_t(b)] <= n,
          "decoder prefill: bad range");
  slots_check(slots);
  layers(tokens, Rows{B, n, 0, nullptr, slots.empty() ? nullptr : slots.data()});
  // the head in chunks of whole sequences, so the logits stay within about 64 MB at any vocab
  const int64_t V = c_.vocab_size, budget = std::max<int64_t>(n, (int64_t(1) << 24) / V);
  std::vector<int64_t> rows;
  for (int64_t b0 = 0; b0 < B;) {
    rows.clear();
    int64_t b1 = b0;
    while (b1 < B &&
           (b1 == b0 || int64_t(rows.size()) + to[size_t(b1)] - from[size_t(b1)] <= budget)) {
      for (int64_t t = from[size_t(b1)]; t < to[size_t(b1)]; t++) rows.push_back(b1 * n + t);
      b1++;
    }
    head_rows(rows);
    std::vector<int64_t> first(size_t(b1 - b0 + 1), 0);  // each sequence's first row
    for (int64_t b = b0; b < b1; b++)
      first[size_t(b - b0 + 1)] = first[size_t(b - b0)] + to[size_t(b)] - from[size_t(b)];
    ProfileScope prof(dev_.profile, "prefill visit");
    parallel_for(b1 - b0, 1, int64_t(rows.size()) * V >= (1 << 18), [&](int64_t i) {
      const int64_t b = b0 + i, r = first[size_t(i)], cnt = first[size_t(i + 1)] - r;
      visit(b, std::span<const float>(logits_.span()).subspan(size_t(r * V), size_t(cnt * V)));
    });
    b0 = b1;
  }
}

std::vector<int32_t> Decoder::greedy(std::span<const int32_t> prompts, int64_t plen, int64_t n_new,
                                     int64_t n_ids) {
  check(int64_t(prompts.size()) == B_ * plen && plen >= 1 && n_new >= 0 && plen + n_new <= L_ + 1,
        "decoder: prompt shape or length");
  check(n_ids >= 0 && n_ids <= c_.vocab_size, "decoder: greedy over more ids than the vocabulary");
  std::vector<int32_t> tok(static_cast<size_t>(B_)), out(static_cast<size_t>(B_ * n_new));
  std::span<const float> logits = prefill(prompts, plen, plen - 1);
  const int64_t V = c_.vocab_size, Vd = n_ids > 0 ? n_ids : V;
  for (int64_t i = 0; i < n_new; i++) {
    dev_.ops<float>().argmax(tok.data(), logits.data(), B_, Vd, V);
    for (int64_t b = 0; b < B_; b++) out[size_t(b * n_new + i)] = tok[size_t(b)];
    if (i + 1 < n_new) logits = step(tok, plen + i);
  }
  return out;
}

}  // namespace moelab
