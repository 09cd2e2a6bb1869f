// CPU RMSNorm: one row per iteration, rows spread over threads; the sum of
// squares accumulates in double so row length does not change the rounding.
#include "kernels/rmsnorm.hpp"

#include <cmath>
#include <vector>

namespace troupe {

void rmsnorm(const float* x, float* y, int64_t rows, int64_t dim, dtype wt, const void* w, float eps) {
  std::vector<float> wf(static_cast<size_t>(dim));
  convert_to_f32(wt, w, wf.data(), wf.size());
#pragma omp parallel for schedule(static) if (rows * dim > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    double ss = 0.0;
    for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float inv = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(dim)) + eps);
    for (int64_t i = 0; i < dim; ++i) yr[i] = wf[i] * (xr[i] * inv);
  }
}

}  // namespace troupe
