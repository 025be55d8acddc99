#pragma once
// CPU ops. Each op is a struct with a forward/backward pair, templated on the scalar type: float
// for training, double so that tests can check the real kernels against finite differences.
// backend/reference.hpp has a scalar reference with the same interface for every op here; a new
// op joins both, the op table (backend/device.hpp), tests/unit/test_ops.cpp and
// tests/unit/test_backend_ops.cpp.
//
// Conventions: row-major; N = rows (tokens); shapes in comments as [rows, cols]. Parameter
// gradients accumulate (+=) so that gradient accumulation is free; a null parameter-gradient
// pointer means the tensor is frozen and its gradient is skipped. Input gradients are written
// (=) unless the comment says +=.
#include <cstdint>

#include "kernels/gemm.hpp"

namespace moelab::kernels {

// ----------------------------------------------------------------------------
// embedding: out[n] = W[tok[n]]

template <typename T>
struct embedding {
  // out [N,d], tok [N], W [V,d]
  static void forward(T* out, const int32_t* tok, const T* W, int64_t N, int64_t d);
  // dW [V,d] +=, dout [N,d]
  static void backward(T* dW, const T* dout, const int32_t* tok, int64_t N, int64_t d);
};

// ----------------------------------------------------------------------------
// rmsnorm: y = x / sqrt(mean(x^2) + eps) * g

template <typename T>
struct rmsnorm {
  // out [N,d], rstd [N] (saved for backward), x [N,d], g [d]
  static void forward(T* out, T* rstd, const T* x, const T* g, int64_t N, int64_t d, double eps);
  // dx [N,d] += (the residual stream's gradient), dg [d] += (null if frozen)
  static void backward(T* dx, T* dg, const T* dout, const T* x, const T* g, const T* rstd,
                       int64_t N, int64_t d);
};

// ----------------------------------------------------------------------------
// linear: y = x W^T + b (W [O,I], PyTorch layout) or y = x W + b (W [I,O], HF expert layout)

enum class WLayout { OutIn, InOut };

template <typename T>
struct linear {
  // out [N,O], x [N,I], b [O] or null; the products at precision p (float only)
  static void forward(T* out, const T* x, const T* W, const T* b, int64_t N, int64_t I, int64_t O,
                      WLayout layout, Precision p = Precision::F32);
  // dx [N,I] (= , or += if dx_accumulate; null to skip), dW += (null if frozen), db [O] +=
  static void backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W, int64_t N,
                       int64_t I, int64_t O, WLayout layout, bool dx_accumulate = false,
                       Precision p = Precision::F32);
};

// linear_grouped: the linear maps of E experts in one call (an MoE layer's grouped GEMM). Expert
// e maps its rows [offsets[e], offsets[e+1]) of x, out, dout and dx with W_e = W + e * I * O
// and b_e = b + e * O (dW and db strided the same way). When the experts' rows split evenly
// over the threads, each expert runs on one thread beside the others (a GEMM of a few hundred
// rows does not scale over threads); otherwise one after another, each on every thread. The
// numbers are linear's on the expert's rows either way.
template <typename T>
struct linear_grouped {
  // out [R,O], x [R,I], W [E,O,I] (OutIn) or [E,I,O] (InOut), b [E,O] or null, offsets [E+1]
  static void forward(T* out, const T* x, const T* W, const T* b, const int64_t* offsets, int64_t E,
                      int64_t I, int64_t O, WLayout layout, Precision p = Precision::F32);
  // dx [R,I] (= , or += if dx_accumulate; null to skip), dW [E,..] += (null if frozen),
  // db [E,O] += (null if frozen or no bias)
  static void backward(T* dx, T* dW, T* db, const T* dout, const T* x, const T* W,
                       const int64_t* offsets, int64_t E, int64_t I, int64_t O, WLayout layout,
                       bool dx_accumulate = false, Precision p = Precision::F32);
};

// ----------------------------------------------------------------------------
// rope: half-split (NeoX) rotation of each head, optional YaRN (methods.md §3.4)

struct RopeParams {
  double theta = 10000.0;
  double yarn_factor = 1.0;  // 1 = plain RoPE
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  int64_t original_context = 4096;
};

template <typename T>
struct rope {
  // cos, sin [seq, head_dim/2], already multiplied by the YaRN concentration
  static void tables(T* cos, T* sin, int64_t seq, int64_t head_dim, const RopeParams& p);
  // in place on heads [N, n_heads*head_dim] inside rows of `stride` elements; position = n % seq
  static void forward(T* x, int64_t N, int64_t seq, int64_t n_heads, int64_t head_dim,
                      int64_t stride, const T* cos, const T* sin);
  // in place: the transpose rotation
  static void backward(T* dx, int64_t N, int64_t seq, int64_t n_heads, int64_t head_dim,
                       int64_t stride, const T* cos, const T* sin);
};

// ----------------------------------------------------------------------------
// attention: grouped-query causal attention with optional sliding window and learned sinks
// (methods.md §3.3), in tiles: memory is O(tile^2) per thread, never O(T^2) per head.

struct AttnShape {
  int64_t B, T, H, KV, hd;
  int64_t window = 0;  // 0 = full causal; else keys j with i - window < j <= i
  double scale = 0;    // softmax scale, usually 1/sqrt(hd)
};

template <typename T>
struct attention {
  // qkv [B*T, (H+2KV)*hd] (q | k | v per row), sinks [H] or null
  // out [B*T, H*hd], lse [B*T, H] (log-normaliser incl. the sink, saved for backward)
  static void forward(T* out, T* lse, const T* qkv, const T* sinks, const AttnShape& s);
  // dqkv [B*T, (H+2KV)*hd] =, dsinks [H] += (null if frozen or no sinks)
  static void backward(T* dqkv, T* dsinks, const T* dout, const T* qkv, const T* sinks,
                       const T* out, const T* lse, const AttnShape& s);
};

// attention_decode: one new position per sequence against a key/value cache (the KV-cache
// decoder's step). Same arithmetic as attention::forward's row for that position.

template <typename T>
struct attention_decode {
  // out [B, H*hd] for position pos[b] of sequence b; q from qkv [B, (H+2KV)*hd]; keys
  // [S,KV,hd,L] and values [S,L,KV*hd] of S cache slots, sequence b in slot slot[b] (null: b),
  // hold positions 0..pos[b] (included); s.T is unused, s.B sequences. A server's sequences sit
  // at different positions in whatever slots were free when they came.
  static void forward(T* out, const T* qkv, const T* K, const T* V, int64_t L, const T* sinks,
                      const int64_t* pos, const int64_t* slot, const AttnShape& s);
};

// ----------------------------------------------------------------------------
// swiglu (gpt-oss, methods.md §3.6): h interleaves gate (even) and linear (odd) columns;
// out = min(g, L) * sigmoid(alpha * min(g, L)) * (clamp(l, -L, L) + 1)

template <typename T>
struct swiglu {
  // out [N,I], h [N,2I]
  static void forward(T* out, const T* h, int64_t N, int64_t I, double limit, double alpha);
  // dh [N,2I] =
  static void backward(T* dh, const T* dout, const T* h, int64_t N, int64_t I, double limit,
                       double alpha);
};

// ----------------------------------------------------------------------------
// router: top-k over the raw logits (plus the balance bias, if any, for the choice only),
// softmax over the k selected raw logits (methods.md §3.5, §3.7.1), plus the Switch
// load-balancing loss and the ST-MoE z-loss (§3.7).

struct RouterLosses {
  double aux = 0;      // coef_aux * E * sum_e f_e * P_e, f_e = share of the N*k assignments
  double z = 0;        // coef_z * mean_n logsumexp(logits_n)^2
  double aux_raw = 0;  // the same without the coefficients (aux_raw = 1 at perfect balance)
  double z_raw = 0;
};

template <typename T>
struct router {
  // idx [N,k] (ties broken towards the lower expert index), w [N,k], logits [N,E]; bias [E] or
  // null: chosen by logits + bias, weighted by the softmax of the chosen raw logits
  static void forward(int32_t* idx, T* w, const T* logits, const T* bias, int64_t N, int64_t E,
                      int64_t k);
  // dlogits [N,E] = from dw [N,k]
  static void backward(T* dlogits, const T* dw, const T* w, const int32_t* idx, int64_t N,
                       int64_t E, int64_t k);
  static RouterLosses loss_forward(const T* logits, const int32_t* idx, int64_t N, int64_t E,
                                   int64_t k, double coef_aux, double coef_z);
  // dlogits [N,E] += scale * d(aux + z)/dlogits
  static void loss_backward(T* dlogits, const T* logits, const int32_t* idx, int64_t N, int64_t E,
                            int64_t k, double coef_aux, double coef_z, double scale);
};

// ----------------------------------------------------------------------------
// moe dispatch / combine: dropless. The N*k (token, slot) assignments are counting-sorted by
// expert (stable, so deterministic); expert e owns rows [offsets[e], offsets[e+1]).

struct MoeRouting {
  int64_t N = 0, E = 0, k = 0;
  const int32_t* order = nullptr;    // [N*k]  sorted row -> token
  const int32_t* pos = nullptr;      // [N*k]  (token, slot) -> sorted row
  const int64_t* offsets = nullptr;  // [E+1]
};

void moe_sort(int32_t* order, int32_t* pos, int64_t* offsets, const int32_t* idx, int64_t N,
              int64_t E, int64_t k);

template <typename T>
struct moe_gather {
  // xe [N*k, d] = x [N,d] rows in sorted order
  static void forward(T* xe, const T* x, const MoeRouting& r, int64_t d);
  // dx [N,d] += sum over the token's k rows of dxe
  static void backward(T* dx, const T* dxe, const MoeRouting& r, int64_t d);
};

template <typename T>
struct moe_combine {
  // out [N,d] = sum_j w[n,j] * y[pos[n,j]]; y [N*k, d]
  static void forward(T* out, const T* y, const T* w, const MoeRouting& r, int64_t d);
  // dy [N*k, d] =, dw [N,k] =
  static void backward(T* dy, T* dw, const T* dout, const T* y, const T* w, const MoeRouting& r,
                       int64_t d);
};

// ----------------------------------------------------------------------------
// cross_entropy: fused softmax + negative log-likelihood over the vocabulary.
// Targets < 0 are ignored.

template <typename T>
struct cross_entropy {
  // logits [N,V], targets [N], lse [N] saved; returns the sum of the losses over valid rows
  static double forward(T* lse, const T* logits, const int32_t* targets, int64_t N, int64_t V);
  // dlogits [N,V] = scale * (softmax - onehot); may alias logits (in place)
  static void backward(T* dlogits, const T* logits, const T* lse, const int32_t* targets, int64_t N,
                       int64_t V, double scale);
};

// ----------------------------------------------------------------------------
// fusion: the MoE-CT gate (docs/methods.md §3.12), out = (1 - a) F + a M, one a per row, or one
// for all rows (a_stride 0)

template <typename T>
struct fusion {
  // out, F, M [N,d]; a [N] (a_stride 1) or [1] (a_stride 0)
  static void forward(T* out, const T* F, const T* M, const T* a, int64_t a_stride, int64_t N,
                      int64_t d);
  // dF = (1 - a) dout, dM = a dout (=); da [N] = sum_j dout (M - F) per row (=, null: skip)
  static void backward(T* dF, T* dM, T* da, const T* dout, const T* F, const T* M, const T* a,
                       int64_t a_stride, int64_t N, int64_t d);
};

// ----------------------------------------------------------------------------
// add: the residual connection, out = a + b (out may alias a or b)

template <typename T>
struct add {
  // out, a, b [n]
  static void forward(T* out, const T* a, const T* b, int64_t n);
};

// ----------------------------------------------------------------------------
// logsumexp: the statistics of a log-softmax over each row, log p_v = z_v - mx - log(sum).
// The training loss (cross_entropy), evaluation's PPL and the server's logprobs all use it.

template <typename T>
struct logsumexp {
  // mx [N] = max of each row of z [N,V]; sum [N] = sum_v exp(z_v - mx), accumulated in T, or in
  // double when sum_double (the server's logprobs)
  static void forward(T* mx, double* sum, const T* z, int64_t N, int64_t V, bool sum_double);
};

// argmax: the first index of each row's maximum among its first V entries (0 if all are NaN)

template <typename T>
struct argmax {
  // idx [N], z [N, stride]
  static void forward(int32_t* idx, const T* z, int64_t N, int64_t V, int64_t stride);
};

// ----------------------------------------------------------------------------
// adamw: the optimizer update (PyTorch's AdamW arithmetic) over trainable ranges of the flat
// parameter buffer; the gradients and moments are packed, [moment, moment + numel) for
// [param, param + numel).

struct AdamWSpan {
  int64_t param = 0, moment = 0, numel = 0;
  bool decay = false;
};

struct AdamWStep {
  double beta1, beta2, eps;
  double step_size;  // lr / (1 - beta1^t)
  double bc2_sqrt;   // sqrt(1 - beta2^t)
  double grad_scale;
  double decay;  // 1 - lr * weight_decay, on spans with decay
};

template <typename T>
struct adamw {
  // p [*], g [n_moments] (read times grad_scale), m, v [n_moments] +=; spans sorted by moment,
  // covering the moments without gaps
  static void update(T* p, const T* g, T* m, T* v, const AdamWSpan* spans, int64_t n_spans,
                     const AdamWStep& k);
};

// ----------------------------------------------------------------------------
// reductions and element-wise maps of the glue between the blocks

template <typename T>
struct vec {
  // acc + sum_i x_i^2 over x [n], in double, summed in fixed chunks (the same bits for any thread
  // count)
  static double sumsq(const T* x, int64_t n, double acc);
  // sum_i x_i over x [n], in double, in index order
  static double sum(const T* x, int64_t n);
  // x [rows, cols] inside rows of `stride` elements *= s
  static void scale(T* x, T s, int64_t rows, int64_t cols, int64_t stride);
  // x [n] = value
  static void fill(T* x, T value, int64_t n);
  // x [n] = sd * N(0, 1), element i from draw i of the counter-based stream (seed, stream)
  static void fill_normal(T* x, int64_t n, double sd, uint64_t seed, uint64_t stream);
  // G [V,V] (double) = the Gram matrix of V vectors of n elements each, summed in double
  static void gram(double* G, const T* const* x, int64_t V, int64_t n);
  // dst[dst_at[r] + c * dst_step] = src[src_at[r] + c] for rows r < m, columns c < cols: rows of
  // src gathered by element offset (src_at, dst_at [m]) and written with a column step (the KV
  // cache's transposed keys: dst_step = the cache's length). Destination elements are distinct.
  static void rows_copy(T* dst, const int64_t* dst_at, int64_t dst_step, const T* src,
                        const int64_t* src_at, int64_t m, int64_t cols);
};

// sigmoid: MoE-CT's token gate, a = 1 / (1 + exp(-z))

template <typename T>
struct sigmoid {
  // y, x [n] (y may alias x)
  static void forward(T* y, const T* x, int64_t n);
  // dx [n] = dy a (1 - a), from the forward's output y (dx may alias dy)
  static void backward(T* dx, const T* dy, const T* y, int64_t n);
};

// ----------------------------------------------------------------------------
// low-rank adapters: scale * B A added onto columns [out0, out0 + out_n) of a weight W, stored
// [O,I] (OutIn) or [I,O] (InOut); A [R,I], B [out_n,R]

struct LowRank {
  int64_t I = 0, O = 0, R = 0, out0 = 0, out_n = 0;
  double scale = 1;
  WLayout layout = WLayout::OutIn;
};

template <typename T>
struct lora {
  // merge: W = T(double(W) + sum_k scale B[o,k] A[k,i]) (the row summed in double, one rounding)
  static void merge(T* W, const T* A, const T* B, const LowRank& s);
  // expand: W += T(scale * sum_r A[r,i] B[o,r]) (a measurement's dense view of an adapter)
  static void expand(T* W, const T* A, const T* B, const LowRank& s);
};

// ----------------------------------------------------------------------------
// DeRS deltas (docs/methods.md §3.13) on a base matrix stored [I,O]

template <typename T>
struct delta_sparse {
  // W [I*O] = base, then W[pos[j]] += v[j]; pos [nnz] sorted flat positions, v [nnz]
  static void forward(T* W, const T* base, const int32_t* pos, const T* v, int64_t n, int64_t nnz);
  // dv [nnz] += dW[pos[j]]
  static void backward(T* dv, const T* dW, const int32_t* pos, int64_t nnz);
  // out [N,O] += x [N,I] delta without rebuilding it: N * nnz multiply-adds
  static void add(T* out, const T* x, const int32_t* pos, const T* v, int64_t N, int64_t I,
                  int64_t O, int64_t nnz);
};

template <typename T>
struct delta_quant {
  // W [I,O] = base + s[o] codes[i,o]; s [O] per output channel
  static void forward(T* W, const T* base, const int8_t* codes, const T* s, int64_t I, int64_t O);
  // codes [I,O] = delta rounded against s[o] and clamped to +-(2^(bits-1) - 1); 1 bit: the sign
  static void encode(int8_t* codes, const T* delta, const T* s, int64_t I, int64_t O, int64_t bits);
};

// ----------------------------------------------------------------------------
// every op for one scalar type, for backends' op tables (backend/device.hpp)

template <typename T>
struct Kernels {
  using embedding = kernels::embedding<T>;
  using rmsnorm = kernels::rmsnorm<T>;
  using linear = kernels::linear<T>;
  using linear_grouped = kernels::linear_grouped<T>;
  using rope = kernels::rope<T>;
  using attention = kernels::attention<T>;
  using attention_decode = kernels::attention_decode<T>;
  using swiglu = kernels::swiglu<T>;
  using router = kernels::router<T>;
  using moe_gather = kernels::moe_gather<T>;
  using moe_combine = kernels::moe_combine<T>;
  using cross_entropy = kernels::cross_entropy<T>;
  using add = kernels::add<T>;
  using fusion = kernels::fusion<T>;
  using logsumexp = kernels::logsumexp<T>;
  using argmax = kernels::argmax<T>;
  using adamw = kernels::adamw<T>;
  using vec = kernels::vec<T>;
  using sigmoid = kernels::sigmoid<T>;
  using lora = kernels::lora<T>;
  using delta_sparse = kernels::delta_sparse<T>;
  using delta_quant = kernels::delta_quant<T>;
};

}  // namespace moelab::kernels
