// The lm_head product with fp32 logits: y[m][n] = x[m][k] * W[n][k]^T, bf16
// operands, fp32 accumulation and fp32 output (cuBLASLt D type fp32), so the
// logits are not rounded to bf16 (3 significant digits) before sampling and
// near-tied tokens keep their order. The CPU twin is matmul(). Own cuBLASLt
// handle and workspace; the heuristic's first algorithm per shape (the lm_head
// has one weight shape and few row counts). Decode m (<= gemm_gemv_max_m)
// runs the fp32-output GEMV of kernels/gemv.hpp instead. CUDA builds only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "kernels/cuda_stream.hpp"
#include "kernels/gemm.hpp"

namespace troupe {

// ---- CUDA (kernels/cuda/gemm_f32.cu; CUDA builds only) ----

/// cuBLASLt state for gemm_bf16_f32 on the current device (not thread-safe).
class gemm_f32_context {
 public:
  /// Throws error(errc_cuda) when the handle or the workspace cannot be made.
  explicit gemm_f32_context(size_t workspace_bytes = size_t{32} << 20);
  ~gemm_f32_context();
  gemm_f32_context(const gemm_f32_context&) = delete;
  gemm_f32_context& operator=(const gemm_f32_context&) = delete;

  /// Kernel choice (default gemm_path_auto: the GEMV for m <= gemm_gemv_max_m).
  void set_path(gemm_path p);

  /// Programmatic dependent launch of the GEMV path (see gemm_context::set_pdl).
  void set_pdl(bool on);

  /// y fp32 [m][n] = x bf16 [m][k] * w bf16 [n][k]^T on stream s (device
  /// pointers). Graph-capturable (no synchronisation). Throws
  /// error(errc_invalid_argument) for a bad shape, error(errc_cuda) on failure.
  void run(const uint16_t* x, int64_t m, int64_t k, const uint16_t* w, int64_t n, float* y, cuda_stream s);

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

}  // namespace troupe
