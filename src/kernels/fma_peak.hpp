#pragma once
// The machine's measured floating-point peaks, the denominators of the reported utilisation.
#include <optional>
#include <string>

namespace moelab {

// Measured fp32 FMA peak in GFLOP/s with `threads` threads (a register-only FMA loop), on the
// widest FMA the CPU runs (AVX-512 where present, else AVX2), whatever the build's -march: the
// GEMM library dispatches at run time too.
double bench_fma_peak_gflops(int threads, double seconds = 0.5);

// Measured bf16 dot-product peak in GFLOP/s (VDPBF16PS: two bf16 products summed into each fp32
// lane, 4 FLOPs a lane), measured like the FMA peak; nullopt where the CPU lacks AVX512-BF16.
std::optional<double> bench_bf16_peak_gflops(int threads, double seconds = 0.5);

// The vector instruction set each peak was measured with: "avx512f" or "avx2" for fp32,
// "avx512_bf16" or "" for bf16; whether the CPU also has AMX-BF16 tiles (which the GEMM library
// may use for bf16 and which the dot-product peak does not cover).
struct PeakIsa {
  std::string fp32;
  std::string bf16;
  bool amx_bf16 = false;
};
PeakIsa bench_peak_isa();

}  // namespace moelab
