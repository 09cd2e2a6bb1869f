// CPU embedding: one row conversion per token.
#include "kernels/embedding.hpp"

namespace troupe {

void embedding(const int32_t* ids, int64_t n, dtype tt, const void* table, int64_t dim, float* out) {
  const auto* base = static_cast<const std::byte*>(table);
  const size_t row_bytes = static_cast<size_t>(dim) * dtype_size(tt);
#pragma omp parallel for schedule(static) if (n * dim > 65536)
  for (int64_t t = 0; t < n; ++t)
    convert_to_f32(tt, base + static_cast<size_t>(ids[t]) * row_bytes, out + t * dim, static_cast<size_t>(dim));
}

}  // namespace troupe
