// CPU GEMM through OpenBLAS sgemm. bf16/f16 weights are widened to fp32
// panel by panel (a few MiB per thread, reused) and each panel is one sgemm,
// so the widening costs 1/m of the multiply and no fp32 copy of the model is
// ever held. For m <= 4 (decode) a threaded dot-product loop over the
// narrow weights reads each weight byte once and beats convert + sgemm.
#include "kernels/matmul.hpp"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <vector>

namespace troupe {

namespace {

constexpr int64_t small_m = 4;
constexpr int64_t panel_floats = 1 << 20;  // 4 MiB of widened weights per sgemm

void matmul_small(const float* x, int64_t m, const weight_ref& w, float* y) {
  const int64_t n = w.rows, k = w.cols;
  const size_t row_bytes = static_cast<size_t>(k) * dtype_size(w.type);
#pragma omp parallel if (n * k > 262144)
  {
    std::vector<float> row(static_cast<size_t>(k));
#pragma omp for schedule(static)
    for (int64_t j = 0; j < n; ++j) {
      convert_to_f32(w.type, static_cast<const std::byte*>(w.data) + j * row_bytes, row.data(), row.size());
      for (int64_t i = 0; i < m; ++i) {
        const float* xi = x + i * k;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int64_t c = 0; c < k; ++c) acc += xi[c] * row[c];
        y[i * n + j] = acc;
      }
    }
  }
}

// Each thread owns a contiguous slice of output columns (weight rows) and
// runs single-threaded sgemm on it, widening narrow weights panel by panel
// into its own buffer: one thread team (OpenMP) for everything, no second
// pool of OpenBLAS threads competing for the same cores.
void matmul_parallel(const float* x, int64_t m, const weight_ref& w, float* y) {
  const int64_t n = w.rows, k = w.cols;
  const size_t row_bytes = static_cast<size_t>(k) * dtype_size(w.type);
  const bool narrow = w.type != dtype::dtype_f32;
#pragma omp parallel if (m * n * k > 131072)
  {
    const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t per = ((n + nt - 1) / nt + 15) / 16 * 16;
    const int64_t begin = std::min(n, id * per), end = std::min(n, begin + per);
    const int64_t panel_rows = std::max<int64_t>(16, panel_floats / std::max<int64_t>(k, 1));
    std::vector<float> panel(narrow ? static_cast<size_t>(std::min(panel_rows, std::max<int64_t>(end - begin, 0)) * k) : 0);
    for (int64_t j0 = begin; j0 < end; j0 += panel_rows) {
      const int64_t rows = std::min(panel_rows, end - j0);
      const float* wp = static_cast<const float*>(w.data) + j0 * k;
      if (narrow) {
        convert_to_f32(w.type, static_cast<const std::byte*>(w.data) + j0 * row_bytes, panel.data(),
                       static_cast<size_t>(rows * k));
        wp = panel.data();
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(rows),
                  static_cast<int>(k), 1.0f, x, static_cast<int>(k), wp, static_cast<int>(k), 0.0f, y + j0,
                  static_cast<int>(n));
    }
  }
}

}  // namespace

void matmul(const float* x, int64_t m, const weight_ref& w, const weight_ref* bias, float* y) {
  if (m <= 0 || w.rows <= 0) return;
  if (m <= small_m) {
    matmul_small(x, m, w, y);
  } else {
    matmul_parallel(x, m, w, y);
  }
  if (bias != nullptr) {
    std::vector<float> b(static_cast<size_t>(w.rows));
    convert_to_f32(bias->type, bias->data, b.data(), b.size());
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < w.rows; ++j) y[i * w.rows + j] += b[j];
  }
}

}  // namespace troupe
