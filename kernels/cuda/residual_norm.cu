// fp32-residual kernels of the CUDA model. Memory-bound and tiny next to the
// GEMMs: one block per row (256 threads striding the row, block reduction of
// the sum of squares), the row read twice (the second read hits L1/L2).
#include <cstdint>
#include <string>

#include <cuda_bf16.h>

#include "config/errors.hpp"
#include "kernels/cuda/check.cuh"
#include "kernels/residual_norm.hpp"

namespace troupe {

namespace {

using bf16 = __nv_bfloat16;
constexpr int kThreads = 256;

__device__ float block_sum(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float t = 0.0f;
  if (threadIdx.x < blockDim.x / 32) t = shared[threadIdx.x];
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
  if (threadIdx.x == 0) shared[0] = t;
  __syncthreads();
  const float r = shared[0];
  __syncthreads();
  return r;
}

__global__ void residual_rmsnorm_kernel(const bf16* __restrict__ x, float* __restrict__ residual, bf16* __restrict__ y,
                                        int64_t dim, const bf16* __restrict__ w, float eps,
                                        const int32_t* __restrict__ row_index) {
  __shared__ float red[32];
  const int64_t i = blockIdx.x;
  const int64_t r = row_index ? row_index[i] : i;
  float* res = residual + r * dim;
  float ss = 0.0f;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
    float v = res[j];
    if (x) {
      v += __bfloat162float(x[r * dim + j]);
      res[j] = v;
    }
    ss += v * v;
  }
  if (!y) return;
  ss = block_sum(ss, red);
  const float inv = rsqrtf(ss / static_cast<float>(dim) + eps);
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x)
    y[i * dim + j] = __float2bfloat16_rn(__bfloat162float(w[j]) * (res[j] * inv));
}

// One warp per (token, head) row.
__global__ void head_rmsnorm_kernel(bf16* __restrict__ x, int64_t n_rows, int64_t n_heads, int64_t head_dim,
                                    int64_t token_stride, const bf16* __restrict__ w, float eps) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= n_rows) return;
  const int lane = threadIdx.x % 32;
  bf16* p = x + (row / n_heads) * token_stride + (row % n_heads) * head_dim;
  float ss = 0.0f;
  for (int64_t j = lane; j < head_dim; j += 32) {
    const float v = __bfloat162float(p[j]);
    ss += v * v;
  }
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  const float inv = rsqrtf(ss / static_cast<float>(head_dim) + eps);
  for (int64_t j = lane; j < head_dim; j += 32)
    p[j] = __float2bfloat16_rn(__bfloat162float(w[j]) * (__bfloat162float(p[j]) * inv));
}

__global__ void embedding_f32_kernel(const int32_t* __restrict__ ids, const bf16* __restrict__ table, int64_t dim,
                                     float* __restrict__ out) {
  const int64_t t = blockIdx.x;
  const bf16* row = table + static_cast<int64_t>(ids[t]) * dim;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) out[t * dim + j] = __bfloat162float(row[j]);
}

}  // namespace

void residual_rmsnorm_cuda(const uint16_t* x, float* residual, uint16_t* y, int64_t rows, int64_t dim,
                           const uint16_t* w, float eps, const int32_t* row_index, cuda_stream s) {
  if (rows < 0 || dim <= 0 || residual == nullptr || (x == nullptr && y == nullptr) || (y != nullptr && w == nullptr))
    throw error(errc::errc_invalid_argument, "residual_rmsnorm_cuda: rows >= 0, dim > 0, residual, x or y (y with w)");
  if (rows == 0) return;
  if (rows > INT32_MAX) throw error(errc::errc_invalid_argument, "residual_rmsnorm_cuda: too many rows");
  residual_rmsnorm_kernel<<<static_cast<unsigned>(rows), kThreads, 0, s>>>(
      reinterpret_cast<const bf16*>(x), residual, reinterpret_cast<bf16*>(y), dim, reinterpret_cast<const bf16*>(w), eps,
      row_index);
  TROUPE_CUDA_LAUNCH_CHECK("residual_rmsnorm_kernel");
}

void head_rmsnorm_cuda(uint16_t* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, int64_t token_stride,
                       const uint16_t* w, float eps, cuda_stream s) {
  if (n_tokens < 0 || n_heads <= 0 || head_dim <= 0 || token_stride < n_heads * head_dim || x == nullptr ||
      w == nullptr)
    throw error(errc::errc_invalid_argument, "head_rmsnorm_cuda: bad shape or null pointer");
  const int64_t rows = n_tokens * n_heads;
  if (rows == 0) return;
  const int warps = 8;
  head_rmsnorm_kernel<<<static_cast<unsigned>((rows + warps - 1) / warps), warps * 32, 0, s>>>(
      reinterpret_cast<bf16*>(x), rows, n_heads, head_dim, token_stride, reinterpret_cast<const bf16*>(w), eps);
  TROUPE_CUDA_LAUNCH_CHECK("head_rmsnorm_kernel");
}

void embedding_f32_cuda(const int32_t* ids, int64_t n, const uint16_t* table, int64_t dim, float* out, cuda_stream s) {
  if (n < 0 || dim <= 0 || ids == nullptr || table == nullptr || out == nullptr)
    throw error(errc::errc_invalid_argument, "embedding_f32_cuda: bad shape or null pointer");
  if (n == 0) return;
  embedding_f32_kernel<<<static_cast<unsigned>(n), kThreads, 0, s>>>(ids, reinterpret_cast<const bf16*>(table), dim,
                                                                     out);
  TROUPE_CUDA_LAUNCH_CHECK("embedding_f32_kernel");
}

}  // namespace troupe
