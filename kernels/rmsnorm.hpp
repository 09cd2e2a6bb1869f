// RMSNorm as transformers' LlamaRMSNorm computes it in fp32:
// y = x / sqrt(mean(x^2) + eps) * w. Also used per head for Qwen3's q/k norm.
#pragma once

#include <cstdint>

#include "kernels/cuda_stream.hpp"
#include "kernels/dtype.hpp"

namespace troupe {

/// y[r][:] = x[r][:] * rsqrt(mean(x[r]^2) + eps) * w for rows x dim floats;
/// w has dim elements of type wt. y may alias x.
void rmsnorm(const float* x, float* y, int64_t rows, int64_t dim, dtype wt, const void* w, float eps);

// ---- CUDA (kernels/cuda/rmsnorm.cu; CUDA builds only) ----
// bf16 storage, fp32 math (the CPU formula above), one rounding per output.
// dim <= 32768 when dim is a multiple of 8 (and pointers 16-byte aligned),
// else dim <= 8192 (even) or 4096 (odd). Pointers are device memory.

/// y[r][:] = x[r][:] * rsqrt(mean(x[r]^2) + eps) * w on stream s, for bf16 x, y
/// [rows][dim] and bf16 w [dim]; y may alias x. Also the per-head q/k norm of
/// Qwen3 (rows = tokens * heads, dim = head_dim). Throws
/// error(errc_invalid_argument) for a bad shape, error(errc_cuda) on launch failure.
void rmsnorm_cuda(const uint16_t* x, uint16_t* y, int64_t rows, int64_t dim, const uint16_t* w, float eps,
                  cuda_stream s);

/// The Llama block's fused residual add + norm: residual[r] = bf16(residual[r]
/// + x[r]) (added in fp32, stored bf16, as torch adds bf16 tensors), then
/// y[r] = rmsnorm(residual[r]) * w from the stored bf16 residual. x, residual,
/// y are bf16 [rows][dim]; y may alias x (not residual).
void rmsnorm_residual_cuda(const uint16_t* x, uint16_t* residual, uint16_t* y, int64_t rows, int64_t dim,
                           const uint16_t* w, float eps, cuda_stream s);

}  // namespace troupe
