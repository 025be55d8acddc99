#include "model/ffn.hpp"

#include "core/profile.hpp"
#include "kernels/kernels.hpp"

namespace moelab {

using namespace kernels;

template <typename T>
void ffn_forward(const ModelConfig& c, const T* P, const LayerOffsets& o, int64_t N, const T* xn,
                 T* out, const FfnBuffers<T>& b) {
  const int64_t d = c.hidden_size, E = c.num_local_experts, k = c.num_experts_per_tok;
  const int64_t I = c.intermediate_size;
  if (E == 1) {  // dense: no router, no gather, no combine
    {
      ProfileScope prof("expert gemm fwd");
      linear<T>::forward(b.h, xn, P + o.w1, P + o.b1, N, d, 2 * I, WLayout::InOut);
    }
    {
      ProfileScope prof("swiglu fwd");
      swiglu<T>::forward(b.a, b.h, N, I, c.swiglu_limit, c.swiglu_alpha);
    }
    ProfileScope prof("expert gemm fwd");
    linear<T>::forward(out, b.a, P + o.w2, P + o.b2, N, I, d, WLayout::InOut);
    return;
  }
  {
    ProfileScope prof("router fwd");
    linear<T>::forward(b.rlogits, xn, P + o.router_w, P + o.router_b, N, d, E, WLayout::OutIn);
    router<T>::forward(b.idx, b.w, b.rlogits, N, E, k);
    moe_sort(b.order, b.pos, b.offsets, b.idx, N, E, k);
  }
  const MoeRouting r{N, E, k, b.order, b.pos, b.offsets};
  {
    ProfileScope prof("moe dispatch fwd");
    moe_gather<T>::forward(b.xe, xn, r, d);
  }
  {
    ProfileScope prof("expert gemm fwd");
    for (int64_t e = 0; e < E; e++) {
      const int64_t r0 = b.offsets[e], cnt = b.offsets[e + 1] - r0;
      linear<T>::forward(b.h + r0 * 2 * I, b.xe + r0 * d, P + o.w1 + e * d * 2 * I,
                         P + o.b1 + e * 2 * I, cnt, d, 2 * I, WLayout::InOut);
    }
  }
  {
    ProfileScope prof("swiglu fwd");
    swiglu<T>::forward(b.a, b.h, N * k, I, c.swiglu_limit, c.swiglu_alpha);
  }
  {
    ProfileScope prof("expert gemm fwd");
    for (int64_t e = 0; e < E; e++) {
      const int64_t r0 = b.offsets[e], cnt = b.offsets[e + 1] - r0;
      linear<T>::forward(b.y + r0 * d, b.a + r0 * I, P + o.w2 + e * I * d, P + o.b2 + e * d, cnt, I,
                         d, WLayout::InOut);
    }
  }
  ProfileScope prof("moe dispatch fwd");
  moe_combine<T>::forward(out, b.y, b.w, r, d);
}

template void ffn_forward(const ModelConfig&, const float*, const LayerOffsets&, int64_t,
                          const float*, float*, const FfnBuffers<float>&);
template void ffn_forward(const ModelConfig&, const double*, const LayerOffsets&, int64_t,
                          const double*, double*, const FfnBuffers<double>&);

}  // namespace moelab
