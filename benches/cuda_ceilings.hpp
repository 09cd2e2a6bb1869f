// Measured ceilings of the GPU a bench runs on, so that every CUDA bench
// reports its kernels against numbers taken on the same card in the same run
// (datasheet rates are leads, not ceilings): device-to-device copy bandwidth
// (bytes read + bytes written) and cuBLASLt bf16 GEMM at 8192^3. Header-only
// host code (cudart + cublasLt), shared by the bench_cuda_* targets; plus the
// small helpers they all need: a checked call, event timing with a median,
// random bf16 fills (never time on zeros).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "kernels/cuda_stream.hpp"

namespace troupe::bench {

/// Throws std::runtime_error naming the call when a CUDA runtime call fails.
inline void bench_cuda_check(cudaError_t e, const char* what, int line) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e) + " (cuda_ceilings.hpp/bench:" +
                             std::to_string(line) + ")");
}

/// Throws std::runtime_error naming the call when a cuBLAS(Lt) call fails.
inline void bench_cublas_check(cublasStatus_t s, const char* what, int line) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string(what) + ": cublas status " + std::to_string(static_cast<int>(s)) +
                             " (line " + std::to_string(line) + ")");
}

#define TROUPE_BENCH_CUDA(expr) ::troupe::bench::bench_cuda_check((expr), #expr, __LINE__)
#define TROUPE_BENCH_CUBLAS(expr) ::troupe::bench::bench_cublas_check((expr), #expr, __LINE__)

/// Median time in milliseconds of `reps` runs of `fn` on stream s (each run
/// timed with CUDA events), after `warmup` untimed runs.
inline double time_median_ms(cuda_stream s, const std::function<void()>& fn, int warmup = 5, int reps = 20) {
  for (int i = 0; i < warmup; ++i) fn();
  TROUPE_BENCH_CUDA(cudaStreamSynchronize(s));
  cudaEvent_t a, b;
  TROUPE_BENCH_CUDA(cudaEventCreate(&a));
  TROUPE_BENCH_CUDA(cudaEventCreate(&b));
  std::vector<float> ms(static_cast<size_t>(reps));
  for (int i = 0; i < reps; ++i) {
    TROUPE_BENCH_CUDA(cudaEventRecord(a, s));
    fn();
    TROUPE_BENCH_CUDA(cudaEventRecord(b, s));
    TROUPE_BENCH_CUDA(cudaEventSynchronize(b));
    TROUPE_BENCH_CUDA(cudaEventElapsedTime(&ms[static_cast<size_t>(i)], a, b));
  }
  TROUPE_BENCH_CUDA(cudaGetLastError());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

/// n random bf16 bit patterns, normal(0, scale), rounded to nearest even.
inline std::vector<uint16_t> random_bf16(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<uint16_t> v(n);
  for (auto& h : v) {
    float f = d(rng);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    h = static_cast<uint16_t>(bits >> 16);
  }
  return v;
}

/// Fills `bytes` of device memory at dst with random bf16 (a host pattern of
/// up to 16 MiB repeated; enough to keep the data non-trivial).
inline void fill_random_bf16(void* dst, size_t bytes, uint64_t seed) {
  const size_t chunk = std::min<size_t>(bytes, size_t{16} << 20);
  std::vector<uint16_t> pat = random_bf16((chunk + 1) / 2, seed);
  for (size_t at = 0; at < bytes; at += chunk)
    TROUPE_BENCH_CUDA(cudaMemcpy(static_cast<char*>(dst) + at, pat.data(), std::min(chunk, bytes - at),
                                 cudaMemcpyHostToDevice));
}

/// Device-to-device cudaMemcpyAsync bandwidth in GB/s (1e9 bytes/s), counted
/// as bytes read + bytes written, over a 1 GiB copy (far beyond L2), median of 20.
inline double ceiling_copy_gbps(cuda_stream s) {
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  TROUPE_BENCH_CUDA(cudaMalloc(&a, bytes));
  TROUPE_BENCH_CUDA(cudaMalloc(&b, bytes));
  fill_random_bf16(a, bytes, 1);
  const double ms = time_median_ms(s, [&] { TROUPE_BENCH_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s)); }, 3, 20);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * static_cast<double>(bytes) / (ms * 1e-3) / 1e9;
}

/// cuBLASLt bf16 GEMM (fp32 accumulate, bf16 out) at m = n = k = 8192 on random
/// data, in TFLOP/s (2*m*n*k / time), best of the heuristic's top 8 algorithms
/// (each timed by median of 10).
inline double ceiling_gemm_tflops(cuda_stream s) {
  const int64_t n = 8192;
  const size_t bytes = static_cast<size_t>(n * n) * 2;
  void *a = nullptr, *b = nullptr, *c = nullptr, *ws = nullptr;
  const size_t ws_bytes = size_t{64} << 20;
  TROUPE_BENCH_CUDA(cudaMalloc(&a, bytes));
  TROUPE_BENCH_CUDA(cudaMalloc(&b, bytes));
  TROUPE_BENCH_CUDA(cudaMalloc(&c, bytes));
  TROUPE_BENCH_CUDA(cudaMalloc(&ws, ws_bytes));
  fill_random_bf16(a, bytes, 2);
  fill_random_bf16(b, bytes, 3);
  cublasLtHandle_t h;
  TROUPE_BENCH_CUBLAS(cublasLtCreate(&h));
  cublasLtMatmulDesc_t op;
  TROUPE_BENCH_CUBLAS(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t tr = CUBLAS_OP_T, nt = CUBLAS_OP_N;
  TROUPE_BENCH_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &tr, sizeof tr));
  TROUPE_BENCH_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &nt, sizeof nt));
  cublasLtMatrixLayout_t la, lb, lc;
  TROUPE_BENCH_CUBLAS(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, n, n, n));
  TROUPE_BENCH_CUBLAS(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, n, n, n));
  TROUPE_BENCH_CUBLAS(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, n, n, n));
  cublasLtMatmulPreference_t pref;
  TROUPE_BENCH_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
  TROUPE_BENCH_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                                           sizeof ws_bytes));
  cublasLtMatmulHeuristicResult_t res[8];
  int found = 0;
  TROUPE_BENCH_CUBLAS(cublasLtMatmulAlgoGetHeuristic(h, op, la, lb, lc, lc, pref, 8, res, &found));
  const float alpha = 1.0f, beta = 0.0f;
  double best_ms = 1e30;
  for (int i = 0; i < found; ++i) {
    const double ms = time_median_ms(
        s,
        [&] {
          TROUPE_BENCH_CUBLAS(cublasLtMatmul(h, op, &alpha, a, la, b, lb, &beta, c, lc, c, lc, &res[i].algo, ws,
                                             ws_bytes, s));
        },
        2, 10);
    best_ms = std::min(best_ms, ms);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(op);
  cublasLtDestroy(h);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
  cudaFree(ws);
  if (found == 0) throw std::runtime_error("ceiling_gemm_tflops: cuBLASLt found no algorithm");
  return 2.0 * static_cast<double>(n) * n * n / (best_ms * 1e-3) / 1e12;
}

}  // namespace troupe::bench
