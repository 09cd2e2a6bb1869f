// GPU linear layers: y[m][n] = x[m][k] * W[n][k]^T (+ bias[n]) in bf16 with
// fp32 accumulation through cuBLASLt, the HF [out_features][in_features]
// weight layout used as is. A gemm_context (one per device, per stage
// thread: not thread-safe) owns the cuBLASLt handle and workspace and picks
// each shape's algorithm once, by timing the heuristic's top candidates.
// The CPU twin is kernels/matmul.hpp's matmul(). CUDA builds only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "kernels/cuda_stream.hpp"

namespace troupe {

// ---- CUDA (kernels/cuda/gemm.cu; CUDA builds only) ----

/// cuBLASLt handle, workspace and per-shape algorithm cache of one device.
class gemm_context {
 public:
  /// Creates the handle and a workspace of `workspace_bytes` on the current
  /// device; throws error(errc_cuda) when either fails.
  explicit gemm_context(size_t workspace_bytes = size_t{32} << 20);
  ~gemm_context();
  gemm_context(const gemm_context&) = delete;
  gemm_context& operator=(const gemm_context&) = delete;

  /// Shapes whose algorithm has been chosen (timed) so far.
  size_t cached_shapes() const;

  /// Number of heuristic candidates timed per new shape (default 8; 1 = take
  /// the heuristic's first without timing).
  void set_candidates(int n);

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
  friend void gemm_bf16(gemm_context&, const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, const uint16_t*,
                        uint16_t*, cuda_stream);
};

/// y[m][n] = sum_k x[m][k] * w[n][k] (+ bias[n]) on stream s: x bf16 [m][k],
/// w bf16 [n][k] (row-major, HF layout), bias bf16 [n] or null, y bf16 [m][n];
/// all device memory, y not overlapping x, w or bias. fp32 accumulation, one
/// rounding to bf16. The first call of a (m, n, k, bias, alignment) shape
/// times up to set_candidates() algorithms on s (synchronising it; while s is
/// being captured into a graph the heuristic's first is used uncached).
/// Throws error(errc_invalid_argument) for a bad shape, error(errc_cuda) when
/// cuBLASLt or CUDA fails (naming the status, file and line).
void gemm_bf16(gemm_context& ctx, const uint16_t* x, int64_t m, int64_t k, const uint16_t* w, int64_t n,
               const uint16_t* bias, uint16_t* y, cuda_stream s);

}  // namespace troupe
