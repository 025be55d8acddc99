#include "model/weight.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <regex>
#include <vector>

#include "core/error.hpp"

namespace moelab {

int64_t Weight::lora_rank() const {
  int64_t r = 0;
  for (const LoraSlot& s : lora) r += s.rank;
  return r;
}

bool Weight::rebuilt() const {
  return delta.kind == DeltaKind::Sparse || delta.kind == DeltaKind::Quant;
}

// Adapter tensors are named after their weight as PEFT names them: NAME.lora_A.weight [r, in]
// and NAME.lora_B.weight [out, r] (one more leading dimension per expert).
void weight_register_lora(Weight& w, ParamLayout& p, const LoraConfig& lc,
                          const std::vector<std::pair<std::string, int64_t>>& names) {
  if (lc.rank <= 0) return;
  int64_t out0 = 0;
  for (const auto& [name, width] : names) {
    bool hit = false;
    for (const std::string& t : lc.targets) hit = hit || std::regex_search(name, std::regex(t));
    if (hit) {
      const std::string stem = name.ends_with(".weight") ? name.substr(0, name.size() - 7) : name;
      std::vector<int64_t> a{lc.rank, w.in}, b{width, lc.rank};
      if (w.experts > 1 || stem.find(".experts.") != std::string::npos) {
        a.insert(a.begin(), w.experts);
        b.insert(b.begin(), w.experts);
      }
      LoraSlot s;
      s.A = p.add(stem + ".lora_A.weight", a, Init::Normal, true);
      s.B = p.add(stem + ".lora_B.weight", b, Init::Zeros, true);
      s.rank = lc.rank;
      s.scale = lc.scale();
      s.out0 = out0;
      s.out_n = width;
      w.lora.push_back(s);
    }
    out0 += width;
  }
  check(out0 == w.out, "lora: slice widths must add up to the weight's outputs");
}

template <typename T>
T* Ctx<T>::grad(int64_t offset, int64_t n) const {
  if (!G || offset < 0) {
    return nullptr;
  }
  const int64_t at = packed->find(*layout, offset, n);
  check(at != PackedLayout::kPartlyFrozen,
        "weight: a gradient range is partly frozen outside a fused weight");
  return at < 0 ? nullptr : G + at;
}

namespace {

// The gradient of a weight's matrix or bias, which one GEMM writes whole. All members of a fused
// range (q|k|v) trainable, or all frozen: G itself, or none. Partly frozen (train.freeze naming
// q_proj alone), the trainable members are not contiguous in G: the GEMM adds onto scratch that
// holds their gradients, copied in before and out after, so each trainable element gets the
// same additions in the same order as in place, and the frozen members' sums are dropped.
template <typename T>
class FusedGrad {
 public:
  FusedGrad(const Ctx<T>& c, int64_t offset, int64_t n) : c_(c), offset_(offset), n_(n) {
    if (!c.G || offset < 0) {
      return;
    }
    const int64_t at = c.packed->find(*c.layout, offset, n);
    if (at >= 0) {
      p_ = c.G + at;
    } else if (at == PackedLayout::kPartlyFrozen) {
      scratch_.assign(size_t(n), T(0));  // [n] the whole range, frozen members included
      for (const PackedLayout::Piece& s : c.packed->pieces(*c.layout, offset, n)) {
        copy(scratch_.data() + s.skip, c.G + s.packed, s.len);
      }
      p_ = scratch_.data();
    }
  }
  T* data() const { return p_; }
  // Copies the trainable members' sums back into G (nothing to do in place).
  void store() {
    if (scratch_.empty()) {
      return;
    }
    for (const PackedLayout::Piece& s : c_.packed->pieces(*c_.layout, offset_, n_)) {
      copy(c_.G + s.packed, scratch_.data() + s.skip, s.len);
    }
  }

 private:
  // dst [n] = src [n] as the device's op: the gradient buffer is the device's memory
  void copy(T* dst, const T* src, int64_t n) const {
    const int64_t at = 0;
    c_.op.rows_copy(dst, &at, 1, src, &at, 1, n);
  }

  const Ctx<T>& c_;
  int64_t offset_, n_;
  T* p_ = nullptr;
  std::vector<T> scratch_;
};

}  // namespace

// ----------------------------------------------------------------------------
// DeRS: rebuilding an expert, or adding its sparse delta directly

namespace {

// c.wbuf [in, out] (as stored) = base + delta_e; returns it.
template <typename T>
const T* weight_rebuild(const Ctx<T>& c, const Weight& w, int64_t e) {
  const int64_t n = w.in * w.out;
  const WeightDelta& d = w.delta;
  check(c.wbuf != nullptr, "weight: a DeRS expert needs the rebuild scratch");
  if (d.kind == DeltaKind::Sparse) {
    c.op.delta_sparse_forward(c.wbuf, c.P + w.w, c.I + d.indices + e * d.nnz,
                              c.P + d.values + e * d.nnz, n, d.nnz);
  } else {  // quant: per output channel scales
    c.op.delta_quant_forward(c.wbuf, c.P + w.w, c.Q + d.codes + e * n, c.P + d.scales + e * w.out,
                             w.in, w.out);
  }
  return c.wbuf;
}

}  // namespace

// ----------------------------------------------------------------------------
// forward: the base map, then each adapter's scale * (x A^T) B^T added onto its columns

template <typename T>
void weight_forward(const Ctx<T>& c, const Weight& w, int64_t e, T* out, const T* x, int64_t N,
                    T* xa) {
  const int64_t I = w.in, O = w.out;
  const T* b = w.b >= 0 ? c.P + w.b + e * O : nullptr;
  const WeightDelta& d = w.delta;
  const bool direct =
      d.kind == DeltaKind::Sparse &&
      (weight_sparse_path == SparsePath::Auto ? N * d.nnz <= I * O
                                              : weight_sparse_path == SparsePath::Direct);
  const T* W = w.rebuilt() && !direct && N > 0 ? weight_rebuild(c, w, e) : c.P + w.w_at(e);
  c.op.linear_forward(out, x, W, b, N, I, O, w.layout, c.dev.precision);
  if (N == 0) return;
  if (direct)  // out += x delta_e: N * nnz multiply-adds, cheaper than a rebuild for few rows
    c.op.delta_sparse_add(out, x, c.I + d.indices + e * d.nnz, c.P + d.values + e * d.nnz, N, I, O,
                          d.nnz);
  const int64_t R = w.lora_rank();
  int64_t r0 = 0;
  for (const LoraSlot& s : w.lora) {
    const T *A = c.P + s.A_at(e, I), *B = c.P + s.B_at(e);
    T* h = xa + r0;  // [N, rank] inside rows of R
    c.op.gemm(c.dev.precision, Trans::N, Trans::T, N, s.rank, I, x, I, A, I, T(0), h, R);
    c.op.scale(h, T(s.scale), N, s.rank, R);
    c.op.gemm(c.dev.precision, Trans::N, Trans::T, N, s.out_n, s.rank, h, R, B, s.rank, T(1),
              out + s.out0, O);
    r0 += s.rank;
  }
}

// ----------------------------------------------------------------------------
// backward of a rebuilt expert: the gradient of W_e = base + delta_e goes whole to the base and,
// at the kept positions, to the sparse values (codes and scales do not train)

namespace {

template <typename T>
void weight_backward_rebuilt(const Ctx<T>& c, const Weight& w, int64_t e, T* dx, const T* dout,
                             const T* x, int64_t N, T* dW, T* db, bool dx_accumulate) {
  const int64_t I = w.in, O = w.out, n = I * O;
  const WeightDelta& d = w.delta;
  const T* W = weight_rebuild(c, w, e);
  T* dv = d.kind == DeltaKind::Sparse ? c.grad(d.values + e * d.nnz, d.nnz) : nullptr;
  if (!dv) {
    c.op.linear_backward(dx, dW, db, dout, x, W, N, I, O, w.layout, dx_accumulate, c.dev.precision);
    return;
  }
  check(c.gbuf != nullptr, "weight: a trained sparse delta needs the gradient scratch");
  c.op.fill(c.gbuf, T(0), n);
  c.op.linear_backward(dx, c.gbuf, db, dout, x, W, N, I, O, w.layout, dx_accumulate,
                       c.dev.precision);
  c.op.delta_sparse_backward(dv, c.gbuf, c.I + d.indices + e * d.nnz, d.nnz);
  if (dW) c.op.add(dW, dW, c.gbuf, n);
}

}  // namespace

// ----------------------------------------------------------------------------
// backward: with h = scale x A^T saved, dB += dy^T h, dh = scale dy B, dA += dh^T x, dx += dh A

template <typename T>
void weight_backward(const Ctx<T>& c, const Weight& w, int64_t e, T* dx, const T* dout, const T* x,
                     int64_t N, const T* xa, T* dxa, bool dx_accumulate) {
  const int64_t I = w.in, O = w.out;
  FusedGrad<T> dW(c, w.w_at(e), I * O);
  FusedGrad<T> db(c, w.b >= 0 ? w.b + e * O : -1, O);
  if (w.rebuilt() && N > 0) {
    weight_backward_rebuilt(c, w, e, dx, dout, x, N, dW.data(), db.data(), dx_accumulate);
  } else {
    c.op.linear_backward(dx, dW.data(), db.data(), dout, x, c.P + w.w_at(e), N, I, O, w.layout,
                         dx_accumulate, c.dev.precision);
  }
  dW.store();
  db.store();
  if (N == 0) return;
  const int64_t R = w.lora_rank();
  int64_t r0 = 0;
  for (const LoraSlot& s : w.lora) {
    const T *A = c.P + s.A_at(e, I), *B = c.P + s.B_at(e);
    T* dA = c.grad(s.A_at(e, I), s.rank * I);
    T* dB = c.grad(s.B_at(e), s.out_n * s.rank);
    const T* h = xa + r0;
    T* dh = dxa + r0;
    const Precision p = c.dev.precision;
    if (dB)
      c.op.gemm(p, Trans::T, Trans::N, s.out_n, s.rank, N, dout + s.out0, O, h, R, T(1), dB,
                s.rank);
    if (dA || dx) {
      c.op.gemm(p, Trans::N, Trans::N, N, s.rank, s.out_n, dout + s.out0, O, B, s.rank, T(0), dh,
                R);
      c.op.scale(dh, T(s.scale), N, s.rank, R);
      if (dA) c.op.gemm(p, Trans::T, Trans::N, s.rank, I, N, dh, R, x, I, T(1), dA, I);
      if (dx) c.op.gemm(p, Trans::N, Trans::N, N, I, s.rank, dh, R, A, I, T(1), dx, I);
    }
    r0 += s.rank;
  }
}

// ----------------------------------------------------------------------------
// an expert's whole matrix

template <typename T>
void weight_expert_dense(const Ctx<T>& c, const Weight& w, int64_t e, T* out) {
  const int64_t I = w.in, O = w.out;
  const T* W = w.rebuilt() ? weight_rebuild(c, w, e) : c.P + w.w_at(e);
  std::copy_n(W, I * O, out);
  for (const LoraSlot& s : w.lora)  // W[i, out0 + o] += scale * sum_r A[r, i] B[o, r]
    c.op.lora_expand(out, c.P + s.A_at(e, I), c.P + s.B_at(e),
                     kernels::LowRank{I, O, s.rank, s.out0, s.out_n, s.scale, w.layout});
}

template struct Ctx<float>;
template struct Ctx<double>;
template void weight_forward(const Ctx<float>&, const Weight&, int64_t, float*, const float*,
                             int64_t, float*);
template void weight_forward(const Ctx<double>&, const Weight&, int64_t, double*, const double*,
                             int64_t, double*);
template void weight_backward(const Ctx<float>&, const Weight&, int64_t, float*, const float*,
                              const float*, int64_t, const float*, float*, bool);
template void weight_expert_dense(const Ctx<float>&, const Weight&, int64_t, float*);
template void weight_expert_dense(const Ctx<double>&, const Weight&, int64_t, double*);
template void weight_backward(const Ctx<double>&, const Weight&, int64_t, double*, const double*,
                              const double*, int64_t, const double*, double*, bool);

}  // namespace moelab
