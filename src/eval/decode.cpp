#include "eval/decode.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.hpp"
#include "model/ffn.hpp"

namespace moelab {

using namespace kernels;

Decoder::Decoder(const Model<float>& model, int64_t batch, int64_t max_len)
    : m_(model), c_(model.cfg), B_(batch), L_(max_len) {
  if (max_len > c_.max_position_embeddings)
    fail("decoder: max_len exceeds max_position_embeddings");
  const int64_t d = c_.hidden_size, H = c_.num_attention_heads, KV = c_.num_key_value_heads;
  const int64_t hd = c_.head_dim, E = c_.num_local_experts, k = c_.num_experts_per_tok;
  const int64_t I = c_.intermediate_size, R = B_ * k;
  k_.assign(size_t(c_.num_hidden_layers), std::vector<float>(size_t(B_ * L_ * KV * hd)));
  v_ = k_;
  x_.resize(B_ * d), xn_.resize(B_ * d), tmp_.resize(B_ * d), rstd_.resize(B_);
  qkv_.resize(B_ * (H + 2 * KV) * hd), att_.resize(B_ * H * hd), logits_.resize(B_ * c_.vocab_size);
  h_.resize(R * 2 * I), a_.resize(R * I), y_.resize(R * d), xe_.resize(R * d);
  rl_.resize(B_ * E), w_.resize(R), idx_.resize(R), order_.resize(R), pos_.resize(R),
      off_.resize(E + 1);
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

std::span<const float> Decoder::run(std::span<const int32_t> tokens, int64_t n, int64_t t0,
                                    int64_t from) {
  check(int64_t(tokens.size()) == B_ * n && t0 + n <= L_ && (n == 1 || t0 == 0),
        "decoder: batch, positions or range out of range");
  const float* P = m_.params.data();
  const ParamLayout& lay = m_.layout;
  const int64_t d = c_.hidden_size, H = c_.num_attention_heads, KV = c_.num_key_value_heads;
  const int64_t hd = c_.head_dim, C = (H + 2 * KV) * hd, E = c_.num_local_experts;
  const int64_t k = c_.num_experts_per_tok, I = c_.intermediate_size, half = hd / 2;
  const int64_t N = B_ * n, R = N * k, V = c_.vocab_size;
  const float scale = float(1.0 / std::sqrt(double(hd)));
  x_.resize(N * d), xn_.resize(N * d), tmp_.resize(N * d), rstd_.resize(N);
  qkv_.resize(N * C), att_.resize(N * H * hd), lse_.resize(N * H);
  h_.resize(R * 2 * I), a_.resize(R * I), y_.resize(R * d), xe_.resize(R * d);
  rl_.resize(N * E), w_.resize(R), idx_.resize(R), order_.resize(R), pos_.resize(R);
  embedding<float>::forward(x_.data(), tokens.data(), P + lay.embed, N, d);
  for (int64_t l = 0; l < c_.num_hidden_layers; l++) {
    const LayerOffsets& o = lay.layers[size_t(l)];
    rmsnorm<float>::forward(xn_.data(), rstd_.data(), x_.data(), P + o.ln1, N, d, c_.rms_norm_eps);
    linear<float>::forward(qkv_.data(), xn_.data(), P + o.qkv_w,
                           o.qkv_b >= 0 ? P + o.qkv_b : nullptr, N, d, C, WLayout::OutIn);
    // row b*n + t is position t0 + t: the tables from t0 with period n
    rope<float>::forward(qkv_.data(), N, n, H, hd, C, cos_.data() + t0 * half,
                         sin_.data() + t0 * half);
    rope<float>::forward(qkv_.data() + H * hd, N, n, KV, hd, C, cos_.data() + t0 * half,
                         sin_.data() + t0 * half);
    float* K = k_[size_t(l)].data();
    float* Vc = v_[size_t(l)].data();
    for (int64_t b = 0; b < B_; b++)
      for (int64_t t = 0; t < n; t++) {
        const float* row = qkv_.data() + (b * n + t) * C;
        std::copy_n(row + H * hd, KV * hd, K + (b * L_ + t0 + t) * KV * hd);
        std::copy_n(row + (H + KV) * hd, KV * hd, Vc + (b * L_ + t0 + t) * KV * hd);
      }
    const int64_t window = c_.layer_sliding[size_t(l)] ? c_.sliding_window : 0;
    const float* sinks = o.sinks >= 0 ? P + o.sinks : nullptr;
    if (n > 1) {  // from position 0: the training kernel over the block
      attention<float>::forward(att_.data(), lse_.data(), qkv_.data(), sinks,
                                AttnShape{B_, n, H, KV, hd, window, double(scale)});
    } else {
      const int64_t t = t0, lo = window > 0 ? std::max<int64_t>(0, t - window + 1) : 0;
#pragma omp parallel for schedule(static) if (B_ * H * (t + 1) * hd >= (1 << 15))
      for (int64_t bh = 0; bh < B_ * H; bh++) {
        const int64_t b = bh / H, h = bh % H, g = h / (H / KV);
        const float* q = qkv_.data() + b * C + h * hd;
        std::vector<float> s(size_t(t + 1 - lo));
        float mx = sinks ? sinks[h] : -std::numeric_limits<float>::infinity();
        for (int64_t j = lo; j <= t; j++) {
          const float* kj = K + ((b * L_ + j) * KV + g) * hd;
          float dot = 0;
          for (int64_t c = 0; c < hd; c++) dot += q[c] * kj[c];
          s[size_t(j - lo)] = dot * scale;
          mx = std::max(mx, s[size_t(j - lo)]);
        }
        float sum = sinks ? std::exp(sinks[h] - mx) : 0.f;
        for (float& v : s) sum += (v = std::exp(v - mx));
        float* out = att_.data() + b * H * hd + h * hd;
        std::fill_n(out, hd, 0.f);
        for (int64_t j = lo; j <= t; j++) {
          const float p = s[size_t(j - lo)] / sum;
          const float* vj = Vc + ((b * L_ + j) * KV + g) * hd;
          for (int64_t c = 0; c < hd; c++) out[c] += p * vj[c];
        }
      }
    }
    linear<float>::forward(tmp_.data(), att_.data(), P + o.o_w, o.o_b >= 0 ? P + o.o_b : nullptr, N,
                           H * hd, d, WLayout::OutIn);
    for (int64_t i = 0; i < N * d; i++) x_[size_t(i)] += tmp_[size_t(i)];
    // feed-forward
    rmsnorm<float>::forward(xn_.data(), rstd_.data(), x_.data(), P + o.ln2, N, d, c_.rms_norm_eps);
    ffn_forward<float>(c_, P, o, N, xn_.data(), tmp_.data(),
                       {h_.data(), a_.data(), y_.data(), xe_.data(), rl_.data(), w_.data(),
                        idx_.data(), order_.data(), pos_.data(), off_.data()});
    for (int64_t i = 0; i < N * d; i++) x_[size_t(i)] += tmp_[size_t(i)];
  }
  // The head only for the positions whose logits are wanted.
  const int64_t m = n - from;
  head_in_.resize(B_ * m * d);
  for (int64_t b = 0; b < B_; b++)
    std::copy_n(x_.data() + (b * n + from) * d, m * d, head_in_.data() + b * m * d);
  xn_.resize(std::max<int64_t>(int64_t(xn_.size()), B_ * m * d));
  rmsnorm<float>::forward(xn_.data(), rstd_.data(), head_in_.data(), P + lay.norm, B_ * m, d,
                          c_.rms_norm_eps);
  logits_.resize(B_ * m * V);
  linear<float>::forward(logits_.data(), xn_.data(), P + lay.lm_head, nullptr, B_ * m, d, V,
                         WLayout::OutIn);
  return logits_;
}

std::vector<int32_t> Decoder::greedy(std::span<const int32_t> prompts, int64_t plen,
                                     int64_t n_new) {
  check(int64_t(prompts.size()) == B_ * plen && plen >= 1 && plen + n_new <= L_ + 1,
        "decoder: prompt shape or length");
  std::vector<int32_t> tok(static_cast<size_t>(B_)), out(static_cast<size_t>(B_ * n_new));
  std::span<const float> logits = prefill(prompts, plen, plen - 1);
  const int64_t V = c_.vocab_size;
  for (int64_t i = 0; i < n_new; i++) {
    for (int64_t b = 0; b < B_; b++) {
      const float* z = logits.data() + b * V;
      tok[size_t(b)] = int32_t(std::max_element(z, z + V) - z);  // ties: the lowest id
      out[size_t(b * n_new + i)] = tok[size_t(b)];
    }
    if (i + 1 < n_new) logits = step(tok, plen + i);
  }
  return out;
}

}  // namespace moelab
