// The fp32 residual stream of the CUDA model: the residual between blocks is
// kept in fp32 (4 bytes x hidden per token, negligible next to the weights)
// while every GEMM operand is bf16, so rounding does not accumulate over the
// layers the way a bf16 residual does; this keeps tiny random fixtures'
// near-tied logits on the CPU backend's side. One fused kernel per block edge:
// residual += x (bf16 sublayer output, added in fp32), y = bf16(rmsnorm(residual)
// * w). Also the per-head q/k RMSNorm (Qwen3) in place on strided rows of a
// fused QKV output, and the embedding gather into the fp32 residual.
#pragma once

#include <cstdint>

#include "kernels/cuda_stream.hpp"

namespace troupe {

/// CPU twin of residual_rmsnorm_cuda: for each output row i (source row
/// r = row_index ? row_index[i] : i): v = residual[r] + (x ? bf16 x[r] : 0)
/// in fp32; residual[r] = v when x is given; y[i] = bf16(v * rsqrt(mean(v^2)
/// + eps) * w) when y is given. residual fp32 [*][dim]; x bf16 [*][dim]; y bf16
/// [rows][dim]; w bf16 [dim].
void residual_rmsnorm(const uint16_t* x, float* residual, uint16_t* y, int64_t rows, int64_t dim, const uint16_t* w,
                      float eps, const int32_t* row_index);

/// CPU twin of head_rmsnorm_cuda: in place, for token t and head h the
/// head_dim elements at x + t * token_stride + h * head_dim become
/// bf16(rmsnorm(row) * w) (fp32 math).
void head_rmsnorm(uint16_t* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, int64_t token_stride,
                  const uint16_t* w, float eps);

// ---- CUDA (kernels/cuda/residual_norm.cu; CUDA builds only) ----
// Any dim (one block per row, fp32 math, the CPU twins' formulas). Device
// pointers. Row indices must be distinct. Throw error(errc_invalid_argument)
// for a bad argument, error(errc_cuda) when the launch fails.

/// residual_rmsnorm on the GPU (rows >= 0; x or y may be null, not both).
void residual_rmsnorm_cuda(const uint16_t* x, float* residual, uint16_t* y, int64_t rows, int64_t dim,
                           const uint16_t* w, float eps, const int32_t* row_index, cuda_stream s);

/// head_rmsnorm on the GPU.
void head_rmsnorm_cuda(uint16_t* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, int64_t token_stride,
                       const uint16_t* w, float eps, cuda_stream s);

/// out[t][:] = float(table[ids[t]][:]) for n ids: bf16 [vocab][dim] table,
/// fp32 out (the CPU twin is embedding() with dtype_bf16). Ids must be valid.
void embedding_f32_cuda(const int32_t* ids, int64_t n, const uint16_t* table, int64_t dim, float* out, cuda_stream s);

}  // namespace troupe
