// Linear layers: y = x W^T (+ b) with fp32 activations and weights stored as
// f32, bf16 or f16 (the HF [out_features][in_features] layout, used as is).
#pragma once

#include <cstdint>

#include "kernels/dtype.hpp"

namespace troupe {

/// A row-major matrix [rows][cols] (a vector when rows == 1) in its storage type.
struct weight_ref {
  dtype type = dtype::dtype_f32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
};

/// y[m][n] = sum_k x[m][k] * w[n][k] + bias[n], for x [m][w.cols] and
/// y [m][w.rows]; bias may be null (else w.rows elements of any dtype).
void matmul(const float* x, int64_t m, const weight_ref& w, const weight_ref* bias, float* y);

}  // namespace troupe
