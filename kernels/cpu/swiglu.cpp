// CPU SwiGLU: a flat elementwise loop split across threads.
#include "kernels/swiglu.hpp"

#include <cmath>

namespace troupe {

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace troupe
