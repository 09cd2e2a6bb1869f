// Skinny GEMM for decode: y[m][n] = x[m][k] * W[n][k]^T (+ bias[n]) for
// m <= gemv_max_m rows, bf16 operands, fp32 accumulation, W in the HF
// [out_features][in_features] layout. At decode the product is bound by
// reading W once (m tokens reuse every weight byte), and cuBLASLt's small-m
// kernels stop well short of the memory roofline; these kernels stream W
// with 16-byte loads that skip L1, split k across the warps of a block (so
// small n like o_proj still puts enough bytes in flight on every SM) and do
// the arithmetic on the tensor cores (mma m16n8k16: 16 weight rows x 8
// tokens), so m up to 16 costs little more than m = 1. Variants: bf16 out,
// fp32 out (lm_head logits), and the Llama MLP's gate|up product fused with
// SwiGLU (act = silu(gate) * up straight from the accumulators: no gate_up
// buffer, no separate activation kernel). Graph-capturable: no
// synchronisation, allocation or host reads. gemm_bf16 and
// gemm_f32_context::run route small m here on their own; call these directly
// for the fused SwiGLU or for tuning. CPU twin: matmul() (kernels/matmul.hpp).
// CUDA builds only (kernels/cuda/gemv.cu).
#pragma once

#include <cstdint>

#include "kernels/cuda_stream.hpp"

namespace troupe {

/// Largest m (token rows) the GEMV kernels take.
inline constexpr int64_t gemv_max_m = 16;

/// Launch options of the GEMV kernels.
struct gemv_options {
  /// Programmatic dependent launch: the kernel may start while the previous
  /// kernel on the stream finishes, loading its first weights before it waits
  /// for that kernel's results (x). Only valid when the previous kernel does
  /// not write w or bias (static weights, as at decode).
  bool pdl = false;
  /// Kernel configuration index in [0, gemv_config_count()); -1 picks one by
  /// shape (the measured default). For benches and tuning.
  int config = -1;
};

/// Whether the GEMV kernels take this problem: 1 <= m <= gemv_max_m, n >= 1,
/// k >= 8 with k % 8 == 0, n and k below 2^31, x and w 16-byte aligned.
bool gemv_supported(const void* x, int64_t m, int64_t k, const void* w, int64_t n);

/// Number of kernel configurations (rows per warp, unroll, warps per block).
int gemv_config_count();
/// Short name of configuration i, e.g. "r1u4w8": 16*r output rows per block,
/// u steps of 32 k per load batch (2*r*u 16-byte weight loads per lane in
/// flight), w warps splitting k.
const char* gemv_config_name(int i);
/// Whether configuration i has a fused-SwiGLU kernel.
bool gemv_config_has_swiglu(int i);

/// y bf16 [m][n] = x bf16 [m][k] * w bf16 [n][k]^T (+ bias bf16 [n], may be
/// null) on stream s; fp32 accumulation, one rounding. Device pointers; y
/// must not overlap x, w or bias. Throws error(errc_invalid_argument) when
/// !gemv_supported (or a pointer is null, or opt.config is out of range),
/// error(errc_cuda) when the launch fails.
void gemv_bf16(const uint16_t* x, int64_t m, int64_t k, const uint16_t* w, int64_t n, const uint16_t* bias,
               uint16_t* y, cuda_stream s, const gemv_options& opt = {});

/// As gemv_bf16 with fp32 output y [m][n] (not rounded to bf16): the lm_head.
void gemv_bf16_f32(const uint16_t* x, int64_t m, int64_t k, const uint16_t* w, int64_t n, const uint16_t* bias,
                   float* y, cuda_stream s, const gemv_options& opt = {});

/// The Llama MLP's gate|up projection fused with SwiGLU: w_gate_up bf16
/// [2 * inter][k] holds the gate_proj rows then the up_proj rows (the weight
/// arena's fused layout); bias bf16 [2 * inter] or null. Writes
/// act bf16 [m][inter], act[i][j] = silu(g) * u with g = x[i] . w[j] (+ bias[j])
/// and u = x[i] . w[inter + j] (+ bias[inter + j]) in fp32 (silu(g) =
/// g / (1 + exp(-g))), one rounding: the same function as gemm_bf16 into a
/// [m][2 * inter] buffer followed by swiglu_fused_cuda, without the buffer and
/// without rounding gate and up to bf16 first. m <= gemv_max_m; act must not
/// overlap x, w_gate_up or bias. Throws as gemv_bf16.
void gemv_swiglu_bf16(const uint16_t* x, int64_t m, int64_t k, const uint16_t* w_gate_up, int64_t inter,
                      const uint16_t* bias, uint16_t* act, cuda_stream s, const gemv_options& opt = {});

}  // namespace troupe
