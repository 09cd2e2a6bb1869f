// GPU linear layers: y[m][n] = x[m][k] * W[n][k]^T (+ bias[n]) in bf16 with
// fp32 accumulation through cuBLASLt, the HF [out_features][in_features]
// weight layout used as is. A gemm_context (one per device, per stage
// thread: not thread-safe) owns the cuBLASLt handle and workspace and picks
// each shape's algorithm once, by timing the heuristic's top candidates.
// Decode-sized m (m <= gemm_gemv_max_m) goes to the GEMV kernels of
// kernels/gemv.hpp instead, which read the weights at the memory roofline
// where cuBLASLt's small-m kernels do not (benches/cuda_gemv.cpp).
// The CPU twin is kernels/matmul.hpp's matmul(). CUDA builds only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "kernels/cuda_stream.hpp"

namespace troupe {

/// Which kernels gemm_bf16 and gemm_f32_context::run use.
enum class gemm_path : uint8_t {
  gemm_path_auto,      ///< GEMV for m <= gemm_gemv_max_m when gemv_supported, else cuBLASLt
  gemm_path_cublaslt,  ///< always cuBLASLt (benches, comparisons)
  gemm_path_gemv,      ///< always the GEMV; throws error(errc_invalid_argument) where it cannot run
};

/// Largest m that gemm_path_auto sends to the GEMV kernels (measured on the
/// H100 by benches/cuda_gemv.cpp; see the value's comment in gemm.cu).
extern const int64_t gemm_gemv_max_m;

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

  /// Kernel choice (default gemm_path_auto).
  void set_path(gemm_path p);
  gemm_path path() const;

  /// Launch the GEMV path with programmatic dependent launch (default off):
  /// its first weight loads overlap the previous kernel's tail. Only valid
  /// when no kernel right before a gemm_bf16 on the stream writes w or bias
  /// (static weights, as at decode).
  void set_pdl(bool on);

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
  friend void gemm_bf16(gemm_context&, const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, const uint16_t*,
                        uint16_t*, cuda_stream);
};

/// y[m][n] = sum_k x[m][k] * w[n][k] (+ bias[n]) on stream s: x bf16 [m][k],
/// w bf16 [n][k] (row-major, HF layout), bias bf16 [n] or null, y bf16 [m][n];
/// all device memory, y not overlapping x, w or bias. fp32 accumulation, one
/// rounding to bf16. m <= gemm_gemv_max_m runs the GEMV kernels (no state,
/// graph-capturable) unless set_path says otherwise. On the cuBLASLt path the
/// first call of a (m, n, k, bias, alignment) shape times up to
/// set_candidates() algorithms on s (synchronising it; while s is being
/// captured into a graph the heuristic's first is used uncached).
/// Throws error(errc_invalid_argument) for a bad shape, error(errc_cuda) when
/// cuBLASLt or CUDA fails (naming the status, file and line).
void gemm_bf16(gemm_context& ctx, const uint16_t* x, int64_t m, int64_t k, const uint16_t* w, int64_t n,
               const uint16_t* bias, uint16_t* y, cuda_stream s);

}  // namespace troupe
