// DeRS compression at a real size: a 4-expert MoE layer with 128 x 2048 experts (gate_up [4, 128,
// 4096], down [4, 2048, 128]), the shapes on which the blocked SVD path and the vector ABI of
// the machine are met (tiny matrices take other code paths). Low-rank, 8-bit and 90% sparse
// compressions, each checked against what it must be: low-rank by Eckart-Young (the residual is
// orthogonal to the kept part, and the first singular value is the spectral norm found by power
// iteration, written here independently), 8-bit within half a step per channel, sparse with
// exactly round(0.1 n) values rescaled by 10; and the whole command path (compress_write, then a
// forward of the folder it wrote).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "convert/compress.hpp"
#include "model/delta.hpp"
#include "model/model.hpp"
#include "model_util.hpp"
#include "test_util.hpp"
#include "tiny_config.hpp"
#include "train/checkpoint.hpp"

using namespace moelab;
using namespace moelab::test;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kHidden = 128;
constexpr int64_t kFfn = 2048;

// One MoE layer of 4 experts, 128 x 2048, with distinct random experts.
ModelConfig large() {
  ModelConfig c = tiny(true);
  c.num_hidden_layers = 1;
  c.layer_sliding = {false};
  c.hidden_size = kHidden;
  c.intermediate_size = kFfn;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 32;
  return c;
}

Model<float> trained_like(uint64_t seed) {
  Model<float> m(large(), 2, 9);
  m.init_weights(seed);
  jitter(m, seed + 1);
  return m;
}

Model<float> compressed(const Model<float>& moe, const std::string& delta) {
  DersConfig d = compress_parse_delta(delta);
  d.base = "mean";
  Model<float> out(compress_config(moe.cfg, d, "moe"), 2, 9);
  compress_model(moe, {}, out);
  return out;
}

const TensorView& tensor(const Model<float>& m, const std::string& suffix) {
  for (const TensorView& t : m.layout.tensors)
    if (t.name.ends_with(suffix)) return t;
  throw std::runtime_error("no tensor " + suffix);
}

// delta_e = W_e - mean_f W_f in double, [in, out].
std::vector<double> delta_of(const Model<float>& m, const TensorView& t, int64_t e) {
  const int64_t E = t.shape[0], n = t.shape[1] * t.shape[2];
  std::vector<double> d(size_t(n), 0.0);
  for (int64_t i = 0; i < n; i++) {
    double mean = 0;
    for (int64_t f = 0; f < E; f++) mean += double(m.params[size_t(t.offset + f * n + i)]);
    d[size_t(i)] = double(m.params[size_t(t.offset + e * n + i)]) - mean / double(E);
  }
  return d;
}

double dot_of(const std::vector<double>& x, const std::vector<double>& y) {
  double s = 0;
  for (size_t i = 0; i < x.size(); i++) s += x[i] * y[i];
  return s;
}

// ||M||_2 of M [rows, cols] by power iteration on M^T M.
double spectral_norm(const std::vector<double>& M, int64_t rows, int64_t cols) {
  std::vector<double> v(static_cast<size_t>(cols), 1.0);
  std::vector<double> u(static_cast<size_t>(rows));
  double sigma = 0;
  for (int it = 0; it < 300; it++) {
    for (int64_t r = 0; r < rows; r++) {
      double s = 0;
      for (int64_t c = 0; c < cols; c++) s += M[size_t(r * cols + c)] * v[size_t(c)];
      u[size_t(r)] = s;
    }
    std::fill(v.begin(), v.end(), 0.0);
    for (int64_t r = 0; r < rows; r++)
      for (int64_t c = 0; c < cols; c++) v[size_t(c)] += M[size_t(r * cols + c)] * u[size_t(r)];
    const double norm = std::sqrt(dot_of(v, v));
    for (double& x : v) x /= norm;
    sigma = std::sqrt(norm);
  }
  return sigma;
}

// Saves `m` as a checkpoint folder with a trainer state like a run's.
std::string save(const Model<float>& m, const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("moelab_compress_" + name);
  fs::remove_all(dir);
  checkpoint_write_model(dir.string(), m, {{"step", 40}, {"tokenizer_fingerprint", uint64_t(1)}});
  return dir.string();
}

}  // namespace

// Every expert of both weights: W_hat - W_base is the rank-R part of delta (orthogonal to the
// residual, norms adding up), its first singular value the power-iteration norm of delta, and
// the stored singular values descending. Full rank gives the experts back.
TEST(CompressLarge, LowRankIsTheBestRankRApproximation) {
  const Model<float> moe = trained_like(3);
  const int64_t rank = 16;
  const Model<float> out = compressed(moe, "lowrank:16");
  for (const char* name : {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}) {
    const TensorView& t = tensor(moe, name);
    const int64_t in = t.shape[1], cols = t.shape[2];
    ASSERT_GE(std::max(in, cols), kFfn) << name;
    for (int64_t e = 0; e < t.shape[0]; e++) {
      const std::vector<double> d = delta_of(moe, t, e);
      const std::vector<double> w = ders_expert(out, t.name, e);
      std::vector<double> kept(d.size()), residual(d.size());
      // W_hat_e - W_base = W_hat_e - (W_e - delta_e)
      const int64_t n = in * cols;
      for (int64_t i = 0; i < n; i++) {
        const double we = double(moe.params[size_t(t.offset + e * n + i)]);
        kept[size_t(i)] = w[size_t(i)] - (we - d[size_t(i)]);
        residual[size_t(i)] = d[size_t(i)] - kept[size_t(i)];
      }
      const double dd = dot_of(d, d), kk = dot_of(kept, kept), rr = dot_of(residual, residual);
      EXPECT_LT(std::abs(dot_of(kept, residual)), 1e-4 * dd) << name << " expert " << e;
      EXPECT_NEAR(kk + rr, dd, 1e-4 * dd) << name << " expert " << e;
      EXPECT_GT(kk, double(rank) / double(std::min(in, cols)) * dd) << name << " expert " << e;
      const LowRankDelta lr = delta_lowrank(std::vector<float>(d.begin(), d.end()), in, cols, rank);
      ASSERT_EQ(lr.singular.size(), size_t(std::min(in, cols)));
      for (size_t r = 1; r < lr.singular.size(); r++) EXPECT_GE(lr.singular[r - 1], lr.singular[r]);
      double top = 0;
      for (int64_t r = 0; r < rank; r++) top += lr.singular[size_t(r)] * lr.singular[size_t(r)];
      EXPECT_NEAR(top, kk, 1e-4 * dd) << name << " expert " << e;
      if (e == 0) {
        const double sigma = spectral_norm(d, in, cols);
        EXPECT_NEAR(lr.singular[0], sigma, 1e-5 * sigma) << name;
      }
    }
  }
  const Model<float> full = compressed(moe, "lowrank:128");
  for (const char* name : {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}) {
    const TensorView& t = tensor(moe, name);
    const int64_t n = t.shape[1] * t.shape[2];
    for (int64_t e = 0; e < t.shape[0]; e++) {
      const std::vector<double> w = ders_expert(full, t.name, e);
      double err = 0, norm = 0;
      for (int64_t i = 0; i < n; i++) {
        const double we = double(moe.params[size_t(t.offset + e * n + i)]);
        err += (w[size_t(i)] - we) * (w[size_t(i)] - we);
        norm += we * we;
      }
      EXPECT_LT(std::sqrt(err / norm), 1e-5) << name << " expert " << e;
    }
  }
}

// 8 bits: every element within half a step (max |delta| over the output channel / 127) of W.
TEST(CompressLarge, Quant8WithinHalfAStep) {
  const Model<float> moe = trained_like(4);
  const Model<float> out = compressed(moe, "quant:8");
  const TensorView& t = tensor(moe, "mlp.experts.gate_up_proj");
  const int64_t in = t.shape[1], cols = t.shape[2], n = in * cols;
  for (int64_t e = 0; e < t.shape[0]; e++) {
    const std::vector<double> d = delta_of(moe, t, e);
    const std::vector<double> w = ders_expert(out, t.name, e);
    for (int64_t o = 0; o < cols; o++) {
      double amax = 0;
      for (int64_t i = 0; i < in; i++) amax = std::max(amax, std::abs(d[size_t(i * cols + o)]));
      const double half = 0.5 * amax / 127.0;
      for (int64_t i = 0; i < in; i++) {
        const double we = double(moe.params[size_t(t.offset + e * n + i * cols + o)]);
        ASSERT_LE(std::abs(w[size_t(i * cols + o)] - we), half * (1 + 1e-5) + 1e-6)
            << "expert " << e << " [" << i << ", " << o << "]";
      }
    }
  }
}

// 90% sparse (DARE): exactly round(0.1 n) of each expert's delta kept, each x 10.
TEST(CompressLarge, Sparse90KeepsATenthRescaled) {
  const Model<float> moe = trained_like(5);
  const Model<float> out = compressed(moe, "sparse:0.9");
  const TensorView& t = tensor(moe, "mlp.experts.down_proj");
  const int64_t n = t.shape[1] * t.shape[2];
  for (int64_t e = 0; e < t.shape[0]; e++) {
    const std::vector<double> d = delta_of(moe, t, e);
    const std::vector<double> w = ders_expert(out, t.name, e);
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++) {
      const double base = double(moe.params[size_t(t.offset + e * n + i)]) - d[size_t(i)];
      const double got = w[size_t(i)] - base;
      if (std::abs(got) > 1e-6 * (1 + std::abs(d[size_t(i)]))) {
        kept++;
        ASSERT_NEAR(got, 10 * d[size_t(i)], 1e-5 * (1 + std::abs(10 * d[size_t(i)]))) << i;
      }
    }
    EXPECT_EQ(kept, std::llround(0.1 * double(n))) << "expert " << e;
  }
}

// The command's path: the checkpoint written, compressed to rank 16 from its folder, loaded and
// run forward; the logits move from the source's (rank 16 of 128) but stay finite.
TEST(CompressLarge, CompressWriteLowRankFromAFolder) {
  Model<float> moe = trained_like(6);
  const std::string src = save(moe, "large_src");
  const fs::path dst = fs::temp_directory_path() / "moelab_compress_large_out";
  fs::remove_all(dst);
  CompressOptions o;
  o.ders = compress_parse_delta("lowrank:16");
  o.base = "mean";
  const CompressReport rep = compress_write(src, o, dst.string());
  EXPECT_LT(rep.file_after, rep.file_before);
  EXPECT_GT(rep.total.err_mean, 0);
  EXPECT_LT(rep.total.err_max, 1);
  const ModelConfig c = config_load((dst / "config.json").string());
  Model<float> back(c, 2, 9);
  checkpoint_load(dst.string(), back, nullptr);
  const Batch b = batch(2 * 9, c.vocab_size, 7);
  back.forward(b.tokens, b.targets);
  for (float x : logits_of(back)) ASSERT_TRUE(std::isfinite(x));
  fs::remove_all(dst);
  fs::remove_all(src);
}
