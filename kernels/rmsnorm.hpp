// RMSNorm as transformers' LlamaRMSNorm computes it in fp32:
// y = x / sqrt(mean(x^2) + eps) * w. Also used per head for Qwen3's q/k norm.
#pragma once

#include <cstdint>

#include "kernels/dtype.hpp"

namespace troupe {

/// y[r][:] = x[r][:] * rsqrt(mean(x[r]^2) + eps) * w for rows x dim floats;
/// w has dim elements of type wt. y may alias x.
void rmsnorm(const float* x, float* y, int64_t rows, int64_t dim, dtype wt, const void* w, float eps);

}  // namespace troupe
