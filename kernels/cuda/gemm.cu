// cuBLASLt GEMM for the linear layers. cuBLAS is column-major, our tensors
// row-major: a row-major [r][c] matrix is the column-major [c][r] matrix with
// leading dimension c. So y = x W^T (row-major y [m][n]) is computed as the
// column-major y^T [n][m] = W x^T with A = W seen as column-major [k][n]
// (ld k) and transposed (op T -> n x k), B = x seen as column-major [k][m]
// (ld k, op N), D column-major [n][m] (ld n); the bias epilogue adds bias[i]
// to row i of D, i.e. to output feature i. The best algorithm differs by
// shape (decode m = 1 wants split-K, prefill large tiles), so each new shape
// times the heuristic's top candidates once and caches the winner. Decode
// m goes to the GEMV kernels (kernels/gemv.hpp) before any of this.
#include "kernels/gemm.hpp"

#include <algorithm>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include <cublasLt.h>

#include "config/errors.hpp"
#include "kernels/cuda/check.cuh"
#include "kernels/gemv.hpp"

namespace troupe {

// Measured by benches/cuda_gemv.cpp on the H100 (2026-11-22): the GEMV is
// faster than cuBLASLt's best timed algorithm on all five decode shapes
// (qkv, o_proj, gate_up, down, lm_head) of both the 8B and the 1B model at
// every m = 1, 2, 4, 8, 16; summed over a decode step (layers x 4 GEMMs +
// lm_head) 5.32 vs 5.88 ms at m = 1 and 5.59 vs 6.58 ms at m = 16 (8B),
// 1.03 vs 1.24 and 1.09 vs 1.32 ms (1B). 16 is also the largest m the GEMV
// takes (two 8-token mma tiles), so the threshold is its limit.
const int64_t gemm_gemv_max_m = 16;

namespace {

void cublas_check(cublasStatus_t st, const char* what, const char* file, int line) {
  if (st == CUBLAS_STATUS_SUCCESS) return;
  throw error(errc::errc_cuda, std::string(what) + ": " + cublasLtGetStatusName(st) + " (" +
                                   cublasLtGetStatusString(st) + ") at " + file + ":" + std::to_string(line));
}

}  // namespace

/// Checks a cuBLASLt call.
#define TROUPE_CUBLAS_CHECK(expr) ::troupe::cublas_check((expr), #expr, __FILE__, __LINE__)

namespace {

// Alignment in bytes of an address (capped at 256, cuBLASLt's default assumption).
uint32_t align_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t r = 256;
  while (r > 1 && a % r != 0) r /= 2;
  return r;
}

using shape_key = std::tuple<int64_t, int64_t, int64_t, bool, uint32_t, uint32_t, uint32_t, uint32_t>;

// RAII for the per-call descriptors.
struct descs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  ~descs() {
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

}  // namespace

struct gemm_context::impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  int candidates = 8;
  gemm_path path = gemm_path::gemm_path_auto;
  bool pdl = false;
  std::map<shape_key, cublasLtMatmulAlgo_t> algos;
};

gemm_context::gemm_context(size_t workspace_bytes) : impl_(std::make_unique<impl>()) {
  TROUPE_CUBLAS_CHECK(cublasLtCreate(&impl_->handle));
  if (workspace_bytes > 0) {
    if (cudaError_t e = cudaMalloc(&impl_->workspace, workspace_bytes); e != cudaSuccess) {
      (void)cudaGetLastError();
      cublasLtDestroy(impl_->handle);
      TROUPE_CUDA_CHECK(e);
    }
  }
  impl_->workspace_bytes = workspace_bytes;
}

gemm_context::~gemm_context() {
  if (impl_->workspace) cudaFree(impl_->workspace);
  if (impl_->handle) cublasLtDestroy(impl_->handle);
}

size_t gemm_context::cached_shapes() const { return impl_->algos.size(); }

void gemm_context::set_candidates(int n) { impl_->candidates = std::clamp(n, 1, 32); }

void gemm_context::set_path(gemm_path p) { impl_->path = p; }

gemm_path gemm_context::path() const { return impl_->path; }

void gemm_context::set_pdl(bool on) { impl_->pdl = on; }

void gemm_bf16(gemm_context& ctx, const uint16_t* x, int64_t m, int64_t k, const uint16_t* w, int64_t n,
               const uint16_t* bias, uint16_t* y, cuda_stream s) {
  if (m < 0 || n <= 0 || k <= 0)
    throw error(errc::errc_invalid_argument, "gemm_bf16: m must be >= 0, n and k > 0 (m=" + std::to_string(m) +
                                                 " n=" + std::to_string(n) + " k=" + std::to_string(k) + ")");
  if (m == 0) return;
  if (x == nullptr || w == nullptr || y == nullptr)
    throw error(errc::errc_invalid_argument, "gemm_bf16: x, w and y must be non-null");
  if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX)
    throw error(errc::errc_invalid_argument, "gemm_bf16: m, n and k must fit in int32");
  gemm_context::impl& c = *ctx.impl_;
  if (c.path == gemm_path::gemm_path_gemv ||
      (c.path == gemm_path::gemm_path_auto && m <= gemm_gemv_max_m && gemv_supported(x, m, k, w, n))) {
    gemv_options opt;
    opt.pdl = c.pdl;
    gemv_bf16(x, m, k, w, n, bias, y, s, opt);  // throws, naming the reason, where it cannot run
    return;
  }
  const bool has_bias = bias != nullptr;
  const uint32_t ax = align_of(x), aw = align_of(w), ay = align_of(y), ab = has_bias ? align_of(bias) : 256;

  descs d;
  TROUPE_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
  TROUPE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof op_t));
  TROUPE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof op_n));
  if (has_bias) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    const cudaDataType_t bt = CUDA_R_16BF;
    TROUPE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    TROUPE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
    TROUPE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
  }
  TROUPE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.a, CUDA_R_16BF, static_cast<uint64_t>(k), static_cast<uint64_t>(n), k));
  TROUPE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.b, CUDA_R_16BF, static_cast<uint64_t>(k), static_cast<uint64_t>(m), k));
  TROUPE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.d, CUDA_R_16BF, static_cast<uint64_t>(n), static_cast<uint64_t>(m), n));
  const float alpha = 1.0f, beta = 0.0f;
  auto run = [&](const cublasLtMatmulAlgo_t& algo) {
    return cublasLtMatmul(c.handle, d.op, &alpha, w, d.a, x, d.b, &beta, y, d.d, y, d.d, &algo, c.workspace,
                          c.workspace_bytes, s);
  };

  const shape_key key{m, n, k, has_bias, ax, aw, ay, ab};
  if (auto it = c.algos.find(key); it != c.algos.end()) {
    TROUPE_CUBLAS_CHECK(run(it->second));
    return;
  }

  cublasLtMatmulPreference_t pref = nullptr;
  TROUPE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  struct pref_guard {
    cublasLtMatmulPreference_t p;
    ~pref_guard() { cublasLtMatmulPreferenceDestroy(p); }
  } pg{pref};
  TROUPE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                           &c.workspace_bytes, sizeof c.workspace_bytes));
  // A is W, B is x, C/D is y (see the mapping above).
  TROUPE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aw, sizeof aw));
  TROUPE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ax, sizeof ax));
  TROUPE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ay, sizeof ay));
  TROUPE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ay, sizeof ay));
  std::vector<cublasLtMatmulHeuristicResult_t> res(static_cast<size_t>(c.candidates));
  int found = 0;
  TROUPE_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(c.handle, d.op, d.a, d.b, d.d, d.d, pref, c.candidates,
                                                     res.data(), &found));
  if (found == 0)
    throw error(errc::errc_cuda, "gemm_bf16: cuBLASLt has no algorithm for m=" + std::to_string(m) +
                                     " n=" + std::to_string(n) + " k=" + std::to_string(k));

  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  TROUPE_CUDA_CHECK(cudaStreamIsCapturing(s, &cap));
  if (cap != cudaStreamCaptureStatusNone || found == 1) {
    TROUPE_CUBLAS_CHECK(run(res[0].algo));
    if (cap == cudaStreamCaptureStatusNone) c.algos.emplace(key, res[0].algo);
    return;
  }

  // Time each candidate: one warm-up run, then the median of 5 event-timed runs.
  cudaEvent_t e0, e1;
  TROUPE_CUDA_CHECK(cudaEventCreate(&e0));
  TROUPE_CUDA_CHECK(cudaEventCreate(&e1));
  struct event_guard {
    cudaEvent_t a, b;
    ~event_guard() {
      cudaEventDestroy(a);
      cudaEventDestroy(b);
    }
  } eg{e0, e1};
  int best = -1;
  float best_ms = 0.0f;
  for (int i = 0; i < found; ++i) {
    if (res[static_cast<size_t>(i)].state != CUBLAS_STATUS_SUCCESS) continue;
    if (run(res[static_cast<size_t>(i)].algo) != CUBLAS_STATUS_SUCCESS) continue;  // unsupported: skip
    float t[5];
    for (float& ti : t) {
      TROUPE_CUDA_CHECK(cudaEventRecord(e0, s));
      TROUPE_CUBLAS_CHECK(run(res[static_cast<size_t>(i)].algo));
      TROUPE_CUDA_CHECK(cudaEventRecord(e1, s));
      TROUPE_CUDA_CHECK(cudaEventSynchronize(e1));
      TROUPE_CUDA_CHECK(cudaEventElapsedTime(&ti, e0, e1));
    }
    std::sort(t, t + 5);
    if (best < 0 || t[2] < best_ms) {
      best = i;
      best_ms = t[2];
    }
  }
  if (best < 0) throw error(errc::errc_cuda, "gemm_bf16: no cuBLASLt candidate ran for m=" + std::to_string(m) +
                                                 " n=" + std::to_string(n) + " k=" + std::to_string(k));
  c.algos.emplace(key, res[static_cast<size_t>(best)].algo);
  TROUPE_CUBLAS_CHECK(run(res[static_cast<size_t>(best)].algo));
}

}  // namespace troupe
