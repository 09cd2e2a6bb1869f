// See kernels/gemm_f32.hpp.
#include "kernels/gemm_f32.hpp"

#include <map>
#include <string>
#include <tuple>

#include <cublasLt.h>

#include "config/errors.hpp"
#include "kernels/cuda/check.cuh"
#include "kernels/gemv.hpp"

namespace troupe {

namespace {

void lt_check(cublasStatus_t st, const char* what, const char* file, int line) {
  if (st == CUBLAS_STATUS_SUCCESS) return;
  throw error(errc::errc_cuda, std::string(what) + ": " + cublasLtGetStatusName(st) + " at " + file + ":" +
                                   std::to_string(line));
}
#define TROUPE_LT_CHECK(expr) lt_check((expr), #expr, __FILE__, __LINE__)

struct plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

}  // namespace

struct gemm_f32_context::impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  gemm_path path = gemm_path::gemm_path_auto;
  bool pdl = false;
  std::map<std::tuple<int64_t, int64_t, int64_t>, plan> plans;
};

gemm_f32_context::gemm_f32_context(size_t workspace_bytes) : impl_(std::make_unique<impl>()) {
  TROUPE_LT_CHECK(cublasLtCreate(&impl_->handle));
  if (workspace_bytes > 0) TROUPE_CUDA_CHECK(cudaMalloc(&impl_->workspace, workspace_bytes));
  impl_->workspace_bytes = workspace_bytes;
}

gemm_f32_context::~gemm_f32_context() {
  for (auto& [k, p] : impl_->plans) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.d);
    cublasLtMatmulDescDestroy(p.op);
  }
  if (impl_->workspace) cudaFree(impl_->workspace);
  if (impl_->handle) cublasLtDestroy(impl_->handle);
}

void gemm_f32_context::set_path(gemm_path p) { impl_->path = p; }

void gemm_f32_context::set_pdl(bool on) { impl_->pdl = on; }

void gemm_f32_context::run(const uint16_t* x, int64_t m, int64_t k, const uint16_t* w, int64_t n, float* y,
                           cuda_stream s) {
  if (m < 0 || n <= 0 || k <= 0 || m > INT32_MAX || n > INT32_MAX || k > INT32_MAX)
    throw error(errc::errc_invalid_argument, "gemm_bf16_f32: bad shape m=" + std::to_string(m) +
                                                 " n=" + std::to_string(n) + " k=" + std::to_string(k));
  if (m == 0) return;
  if (x == nullptr || w == nullptr || y == nullptr)
    throw error(errc::errc_invalid_argument, "gemm_bf16_f32: null pointer");
  if (impl_->path == gemm_path::gemm_path_gemv ||
      (impl_->path == gemm_path::gemm_path_auto && m <= gemm_gemv_max_m && gemv_supported(x, m, k, w, n))) {
    gemv_options opt;
    opt.pdl = impl_->pdl;
    gemv_bf16_f32(x, m, k, w, n, nullptr, y, s, opt);  // throws, naming the reason, where it cannot run
    return;
  }
  const auto key = std::make_tuple(m, n, k);
  auto it = impl_->plans.find(key);
  if (it == impl_->plans.end()) {
    plan p;
    TROUPE_LT_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
    TROUPE_LT_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof op_t));
    TROUPE_LT_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof op_n));
    TROUPE_LT_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, static_cast<uint64_t>(k), static_cast<uint64_t>(n), k));
    TROUPE_LT_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, static_cast<uint64_t>(k), static_cast<uint64_t>(m), k));
    TROUPE_LT_CHECK(cublasLtMatrixLayoutCreate(&p.d, CUDA_R_32F, static_cast<uint64_t>(n), static_cast<uint64_t>(m), n));
    cublasLtMatmulPreference_t pref = nullptr;
    TROUPE_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &impl_->workspace_bytes,
                                         sizeof impl_->workspace_bytes);
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(impl_->handle, p.op, p.a, p.b, p.d, p.d, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    TROUPE_LT_CHECK(st);
    if (found == 0)
      throw error(errc::errc_cuda, "gemm_bf16_f32: no cuBLASLt algorithm for m=" + std::to_string(m) +
                                       " n=" + std::to_string(n) + " k=" + std::to_string(k));
    p.algo = res.algo;
    it = impl_->plans.emplace(key, p).first;
  }
  const plan& p = it->second;
  const float alpha = 1.0f, beta = 0.0f;
  TROUPE_LT_CHECK(cublasLtMatmul(impl_->handle, p.op, &alpha, w, p.a, x, p.b, &beta, y, p.d, y, p.d, &p.algo,
                                 impl_->workspace, impl_->workspace_bytes, s));
}

}  // namespace troupe
