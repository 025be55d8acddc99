#include "eval/decode.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.hpp"
#include "core/profile.hpp"
#include "eval/metrics.hpp"
#include "kernels/vmath.hpp"
#include "model/ffn.hpp"

namespace moelab {

using namespace kernels;

namespace {

template <typename T>
void grow(std::vector<T>& v, int64_t n) {
  if (int64_t(v.size()) < n) v.resize(size_t(n));
}

}  // namespace

Decoder::Decoder(const Model<float>& model, int64_t batch, int64_t max_len)
    : m_(model), c_(model.cfg), B_(batch), L_(max_len) {
  check(batch >= 1 && max_len >= 1, "decoder: batch and max_len must be positive");
  if (max_len > c_.max_position_embeddings)
    fail(fmt::format("decoder: {} positions exceed the model's max_position_embeddings ({})",
                     max_len, c_.max_position_embeddings));
  const int64_t KV = c_.num_key_value_heads, hd = c_.head_dim;
  k_.assign(size_t(c_.num_hidden_layers), std::vector<float>(size_t(B_ * L_ * KV * hd)));
  v_ = k_;
  off_.resize(size_t(c_.num_local_experts + 1));
  cos_.resize(L_ * hd / 2), sin_.resize(L_ * hd / 2);
  RopeParams rp{c_.rope_theta, c_.yarn_factor, c_.yarn_beta_fast, c_.yarn_beta_slow,
                c_.yarn_original_context};
  rope<float>::tables(cos_.data(), sin_.data(), L_, hd, rp);
}

std::span<const float> Decoder::step(std::span<const int32_t> tokens, int64_t t) {
  return run(tokens, 1, t, 0);
}

std::span<const float> Decoder::prefill(std::span<const int32_t> tokens, int64_t n, int64_t from) {
  check(n >= 1 && from >= 0 && from < n, "decoder prefill: bad range");
  return run(tokens, n, 0, from);
}

// One new position t per sequence against the cached keys and values: the query heads of a
// KV group share its keys, so each (sequence, group) scores all its heads in one sweep over the
// cache, with vectorised dot products and exp.
void Decoder::attend_one(float* out, const float* qkv, const float* K, const float* Vc,
                         const float* sinks, int64_t t, int64_t window, float scale) const {
  const int64_t H = c_.num_attention_heads, KV = c_.num_key_value_heads, hd = c_.head_dim;
  const int64_t C = (H + 2 * KV) * hd, G = H / KV;
  const int64_t lo = window > 0 ? std::max<int64_t>(0, t - window + 1) : 0, n = t + 1 - lo;
#pragma omp parallel if (B_ * H * n * hd >= (1 << 15))
  {
    std::vector<float> s(size_t(G * n));  // [G, n] scores, then probabilities
#pragma omp for schedule(static)
    for (int64_t bg = 0; bg < B_ * KV; bg++) {
      const int64_t b = bg / KV, g = bg % KV;
      const float* q0 = qkv + b * C + g * G * hd;  // the G query heads of group g
      // keys are cached transposed, [B, KV, hd, L], so scores accumulate along positions
      std::fill(s.begin(), s.end(), 0.f);
      for (int64_t c = 0; c < hd; c++) {
        const float* kc = K + ((b * KV + g) * hd + c) * L_ + lo;
        for (int64_t h = 0; h < G; h++) {
          const float qc = q0[h * hd + c] * scale;
          float* sh = s.data() + h * n;
#pragma omp simd
          for (int64_t j = 0; j < n; j++) sh[j] += qc * kc[j];
        }
      }
      for (int64_t h = 0; h < G; h++) {
        float* sh = s.data() + h * n;
        const float sink = sinks ? sinks[g * G + h] : -std::numeric_limits<float>::infinity();
        float mx = sink;
        for (int64_t j = 0; j < n; j++) mx = std::max(mx, sh[j]);
        float sum = sinks ? std::exp(sink - mx) : 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < n; j++) sum += (sh[j] = fexp(sh[j] - mx));
        const float inv = 1.f / sum;
        float* o = out + b * H * hd + (g * G + h) * hd;
        std::fill_n(o, hd, 0.f);
        for (int64_t j = 0; j < n; j++) {
          const float p = sh[j] * inv;
          const float* vj = Vc + ((b * L_ + lo + j) * KV + g) * hd;
#pragma omp simd
          for (int64_t c = 0; c < hd; c++) o[c] += p * vj[c];
        }
      }
    }
  }
}

std::span<const float> Decoder::run(std::span<const int32_t> tokens, int64_t n, int64_t t0,
                                    int64_t from) {
  layers(tokens, n, t0);
  return head(n, from);
}

void Decoder::layers(std::span<const int32_t> tokens, int64_t n, int64_t t0) {
  check(int64_t(tokens.size()) == B_ * n && t0 >= 0 && t0 + n <= L_ && (n == 1 || t0 == 0),
        "decoder: batch, positions or range out of range");
  // the embedding reads row `id` of the table: an id outside it would read past the weights
  const int32_t V = int32_t(c_.vocab_size);
  check(std::all_of(tokens.begin(), tokens.end(), [V](int32_t t) { return t >= 0 && t < V; }),
        "decoder: a token id outside the model's vocabulary");
  const float* P = m_.params.data();
  const ParamLayout& lay = m_.layout;
  const int64_t d = c_.hidden_size, H = c_.num_attention_heads, KV = c_.num_key_value_heads;
  const int64_t hd = c_.head_dim, C = (H + 2 * KV) * hd, E = c_.num_local_experts;
  const int64_t k = c_.num_experts_per_tok, I = c_.intermediate_size, half = hd / 2;
  const int64_t N = B_ * n, R = N * k;
  const float scale = float(1.0 / std::sqrt(double(hd)));
  const bool pre = n > 1;
  // Buffers only grow: prefill (B*n rows) and steps (B rows) alternate, and shrinking and
  // regrowing would zero-fill them again for every batch.
  grow(x_, N * d), grow(xn_, N * d), grow(tmp_, N * d), grow(rstd_, N);
  grow(qkv_, N * C), grow(att_, N * H * hd), grow(lse_, N * H);
  grow(h_, R * 2 * I), grow(a_, R * I), grow(y_, R * d), grow(xe_, R * d);
  grow(rl_, N * E), grow(w_, R), grow(idx_, R), grow(order_, R), grow(pos_, R);
  embedding<float>::forward(x_.data(), tokens.data(), P + lay.embed, N, d);
  for (int64_t l = 0; l < c_.num_hidden_layers; l++) {
    const LayerOffsets& o = lay.layers[size_t(l)];
    {
      ProfileScope prof(pre ? "prefill norm+qkv" : "step norm+qkv");
      rmsnorm<float>::forward(xn_.data(), rstd_.data(), x_.data(), P + o.ln1, N, d,
                              c_.rms_norm_eps);
      linear<float>::forward(qkv_.data(), xn_.data(), P + o.qkv_w,
                             o.qkv_b >= 0 ? P + o.qkv_b : nullptr, N, d, C, WLayout::OutIn);
    }
    // row b*n + t is position t0 + t: the tables from t0 with period n
    {
      ProfileScope prof(pre ? "prefill rope" : "step rope");
      rope<float>::forward(qkv_.data(), N, n, H, hd, C, cos_.data() + t0 * half,
                           sin_.data() + t0 * half);
      rope<float>::forward(qkv_.data() + H * hd, N, n, KV, hd, C, cos_.data() + t0 * half,
                           sin_.data() + t0 * half);
    }
    float* K = k_[size_t(l)].data();
    float* Vc = v_[size_t(l)].data();
    {
      ProfileScope prof(pre ? "prefill cache+attention" : "step cache+attention");
      for (int64_t b = 0; b < B_; b++)
        for (int64_t t = 0; t < n; t++) {
          const float* row = qkv_.data() + (b * n + t) * C;
          for (int64_t c = 0; c < KV * hd; c++)
            K[(b * KV * hd + c) * L_ + t0 + t] = row[H * hd + c];
          std::copy_n(row + (H + KV) * hd, KV * hd, Vc + (b * L_ + t0 + t) * KV * hd);
        }
      const int64_t window = c_.layer_sliding[size_t(l)] ? c_.sliding_window : 0;
      const float* sinks = o.sinks >= 0 ? P + o.sinks : nullptr;
      if (n > 1) {  // from position 0: the training kernel over the block
        attention<float>::forward(att_.data(), lse_.data(), qkv_.data(), sinks,
                                  AttnShape{B_, n, H, KV, hd, window, double(scale)});
      } else {
        attend_one(att_.data(), qkv_.data(), K, Vc, sinks, t0, window, scale);
      }
    }
    {
      ProfileScope prof(pre ? "prefill o proj" : "step o proj");
      linear<float>::forward(tmp_.data(), att_.data(), P + o.o_w, o.o_b >= 0 ? P + o.o_b : nullptr,
                             N, H * hd, d, WLayout::OutIn);
      for (int64_t i = 0; i < N * d; i++) x_[size_t(i)] += tmp_[size_t(i)];
    }
    // feed-forward
    {
      ProfileScope prof(pre ? "prefill ffn" : "step ffn");
      rmsnorm<float>::forward(xn_.data(), rstd_.data(), x_.data(), P + o.ln2, N, d,
                              c_.rms_norm_eps);
      ffn_forward<float>(c_, P, o, N, xn_.data(), tmp_.data(),
                         {h_.data(), a_.data(), y_.data(), xe_.data(), rl_.data(), w_.data(),
                          idx_.data(), order_.data(), pos_.data(), off_.data()});
      for (int64_t i = 0; i < N * d; i++) x_[size_t(i)] += tmp_[size_t(i)];
    }
  }
}

std::span<const float> Decoder::head(int64_t n, int64_t from) {
  std::vector<int64_t> rows;  // the positions whose logits are wanted
  rows.reserve(size_t(B_ * (n - from)));
  for (int64_t b = 0; b < B_; b++)
    for (int64_t t = from; t < n; t++) rows.push_back(b * n + t);
  head_rows(rows);
  return std::span<const float>(logits_).first(rows.size() * size_t(c_.vocab_size));
}

void Decoder::head_rows(std::span<const int64_t> rows) {
  ProfileScope prof("head");
  const float* P = m_.params.data();
  const int64_t d = c_.hidden_size, V = c_.vocab_size, m = int64_t(rows.size());
  grow(head_in_, m * d);
  for (int64_t r = 0; r < m; r++)
    std::copy_n(x_.data() + rows[size_t(r)] * d, d, head_in_.data() + r * d);
  grow(xn_, m * d), grow(rstd_, m);
  rmsnorm<float>::forward(xn_.data(), rstd_.data(), head_in_.data(), P + m_.layout.norm, m, d,
                          c_.rms_norm_eps);
  grow(logits_, m * V);
  linear<float>::forward(logits_.data(), xn_.data(), P + m_.layout.lm_head, nullptr, m, d, V,
                         WLayout::OutIn);
}

void Decoder::prefill_each(std::span<const int32_t> tokens, int64_t n,
                           std::span<const int64_t> from, std::span<const int64_t> to,
                           const std::function<void(int64_t, std::span<const float>)>& visit) {
  check(int64_t(from.size()) == B_ && int64_t(to.size()) == B_,
        "decoder prefill: one range per sequence");
  for (int64_t b = 0; b < B_; b++)
    check(from[size_t(b)] >= 0 && from[size_t(b)] < to[size_t(b)] && to[size_t(b)] <= n,
          "decoder prefill: bad range");
  layers(tokens, n, 0);
  // the head in chunks of whole sequences, so the logits stay within about 64 MB at any vocab
  const int64_t V = c_.vocab_size, budget = std::max<int64_t>(n, (int64_t(1) << 24) / V);
  std::vector<int64_t> rows;
  for (int64_t b0 = 0; b0 < B_;) {
    rows.clear();
    int64_t b1 = b0;
    while (b1 < B_ &&
           (b1 == b0 || int64_t(rows.size()) + to[size_t(b1)] - from[size_t(b1)] <= budget)) {
      for (int64_t t = from[size_t(b1)]; t < to[size_t(b1)]; t++) rows.push_back(b1 * n + t);
      b1++;
    }
    head_rows(rows);
    std::vector<int64_t> first(size_t(b1 - b0 + 1), 0);  // each sequence's first row
    for (int64_t b = b0; b < b1; b++)
      first[size_t(b - b0 + 1)] = first[size_t(b - b0)] + to[size_t(b)] - from[size_t(b)];
    ProfileScope prof("prefill visit");
#pragma omp parallel for schedule(dynamic, 1) if (int64_t(rows.size()) * V >= (1 << 18))
    for (int64_t b = b0; b < b1; b++) {
      const int64_t r = first[size_t(b - b0)], cnt = first[size_t(b - b0 + 1)] - r;
      visit(b, std::span<const float>(logits_).subspan(size_t(r * V), size_t(cnt * V)));
    }
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
#pragma omp parallel for schedule(static) if (B_ * V >= (1 << 18))
    for (int64_t b = 0; b < B_; b++) {
      tok[size_t(b)] = logits_argmax(logits.data() + b * V, Vd);
      out[size_t(b * n_new + i)] = tok[size_t(b)];
    }
    if (i + 1 < n_new) logits = step(tok, plen + i);
  }
  return out;
}

}  // namespace moelab
