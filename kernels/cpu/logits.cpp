#include "kernels/logits.hpp"

#include <algorithm>
#include <vector>

#include "kernels/rmsnorm.hpp"

namespace troupe {

void logits_compute(const float* hidden, const int32_t* rows, int64_t n_rows, const weight_ref& norm, float eps,
                    const weight_ref& lm_head, float* out) {
  const int64_t dim = lm_head.cols;
  std::vector<float> picked(static_cast<size_t>(n_rows * dim));
  for (int64_t i = 0; i < n_rows; ++i)
    std::copy_n(hidden + static_cast<int64_t>(rows[i]) * dim, dim, picked.data() + i * dim);
  rmsnorm(picked.data(), picked.data(), n_rows, dim, norm.type, norm.data, eps);
  matmul(picked.data(), n_rows, lm_head, nullptr, out);
}

}  // namespace troupe
