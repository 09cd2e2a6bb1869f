// Reference loops for the fp32-residual kernels (tests compare the GPU to these).
#include <cmath>

#include "kernels/dtype.hpp"
#include "kernels/residual_norm.hpp"

namespace troupe {

void residual_rmsnorm(const uint16_t* x, float* residual, uint16_t* y, int64_t rows, int64_t dim, const uint16_t* w,
                      float eps, const int32_t* row_index) {
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t r = row_index ? row_index[i] : i;
    float* res = residual + r * dim;
    double ss = 0.0;
    for (int64_t j = 0; j < dim; ++j) {
      const float v = res[j] + (x ? bf16_to_f32(x[r * dim + j]) : 0.0f);
      if (x) res[j] = v;
      ss += static_cast<double>(v) * v;
    }
    if (!y) continue;
    const float inv = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(dim)) + eps);
    for (int64_t j = 0; j < dim; ++j) {
      y[i * dim + j] = f32_to_bf16(bf16_to_f32(w[j]) * (res[j] * inv));
    }
  }
}

void head_rmsnorm(uint16_t* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, int64_t token_stride,
                  const uint16_t* w, float eps) {
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t h = 0; h < n_heads; ++h) {
      uint16_t* p = x + t * token_stride + h * head_dim;
      double ss = 0.0;
      for (int64_t j = 0; j < head_dim; ++j) ss += static_cast<double>(bf16_to_f32(p[j])) * bf16_to_f32(p[j]);
      const float inv = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(head_dim)) + eps);
      for (int64_t j = 0; j < head_dim; ++j) p[j] = f32_to_bf16(bf16_to_f32(w[j]) * (bf16_to_f32(p[j]) * inv));
    }
}

}  // namespace troupe
