// fp32-residual kernels of the CUDA model. Memory-bound and tiny next to the
// GEMMs, but on the critical path of every decode step (twice per layer), so
// latency matters more than bandwidth: one block per row, and where the row
// fits (dim % 4 == 0, dim <= 16384) each thread issues all its 16-byte loads
// at once and keeps its slice of the row in registers for the second pass.
// (The strided scalar loop it replaces did one dependent DRAM round trip per
// element per thread: 16 us for a 4096-wide row, 1 ms per 8B decode step.)
#include <cstdint>
#include <string>

#include <cuda_bf16.h>

#include "config/errors.hpp"
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/pdl.cuh"
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
  pdl_wait();
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

// Vector path: thread t owns float4 chunks t, t + kThreads, ... (VPT of them).
template <int VPT>
__global__ void residual_rmsnorm_vec_kernel(const bf16* __restrict__ x, float* __restrict__ residual,
                                            bf16* __restrict__ y, int64_t dim, const bf16* __restrict__ w, float eps,
                                            const int32_t* __restrict__ row_index) {
  pdl_wait();
  __shared__ float red[32];
  const int64_t i = blockIdx.x;
  const int64_t r = row_index ? row_index[i] : i;
  const int chunks = static_cast<int>(dim / 4);
  auto* res = reinterpret_cast<float4*>(residual + r * dim);
  float4 v[VPT];
  uint2 xr[VPT];
#pragma unroll
  for (int c = 0; c < VPT; ++c) {
    const int at = c * kThreads + static_cast<int>(threadIdx.x);
    if (at < chunks) {
      v[c] = res[at];
      if (x) xr[c] = reinterpret_cast<const uint2*>(x + r * dim)[at];
    }
  }
  float ss = 0.0f;
#pragma unroll
  for (int c = 0; c < VPT; ++c) {
    const int at = c * kThreads + static_cast<int>(threadIdx.x);
    if (at >= chunks) continue;
    if (x) {
      const auto* h = reinterpret_cast<const __nv_bfloat162*>(&xr[c]);
      const float2 a = __bfloat1622float2(h[0]), b = __bfloat1622float2(h[1]);
      v[c].x += a.x, v[c].y += a.y, v[c].z += b.x, v[c].w += b.y;
      res[at] = v[c];
    }
    ss += v[c].x * v[c].x + v[c].y * v[c].y + v[c].z * v[c].z + v[c].w * v[c].w;
  }
  if (!y) return;
  ss = block_sum(ss, red);
  const float inv = rsqrtf(ss / static_cast<float>(dim) + eps);
#pragma unroll
  for (int c = 0; c < VPT; ++c) {
    const int at = c * kThreads + static_cast<int>(threadIdx.x);
    if (at >= chunks) continue;
    const uint2 wr = reinterpret_cast<const uint2*>(w)[at];
    const auto* wh = reinterpret_cast<const __nv_bfloat162*>(&wr);
    const float2 wa = __bfloat1622float2(wh[0]), wb = __bfloat1622float2(wh[1]);
    __nv_bfloat162 o[2];
    o[0] = __floats2bfloat162_rn(wa.x * (v[c].x * inv), wa.y * (v[c].y * inv));
    o[1] = __floats2bfloat162_rn(wb.x * (v[c].z * inv), wb.y * (v[c].w * inv));
    reinterpret_cast<uint2*>(y + i * dim)[at] = *reinterpret_cast<const uint2*>(o);
  }
}

template <int VPT>
void launch_vec(unsigned rows, cudaStream_t s, const bf16* x, float* residual, bf16* y, int64_t dim, const bf16* w,
                float eps, const int32_t* row_index) {
  launch_pdl("residual_rmsnorm_vec_kernel", residual_rmsnorm_vec_kernel<VPT>, dim3(rows), dim3(kThreads), 0, s, x, residual, y, dim, w,
             eps, row_index);
}

bool aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

// One warp per (token, head) row.
__global__ void head_rmsnorm_kernel(bf16* __restrict__ x, int64_t n_rows, int64_t n_heads, int64_t head_dim,
                                    int64_t token_stride, const bf16* __restrict__ w, float eps) {
  pdl_wait();
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
  const int64_t per_thread = (dim / 4 + kThreads - 1) / kThreads;
  if (dim % 4 == 0 && per_thread <= 16 && aligned(x, 8) && aligned(residual, 16) && aligned(y, 8) && aligned(w, 8)) {
    const auto* xb = reinterpret_cast<const bf16*>(x);
    auto* yb = reinterpret_cast<bf16*>(y);
    const auto* wb = reinterpret_cast<const bf16*>(w);
    const auto n = static_cast<unsigned>(rows);
    if (per_thread <= 1) launch_vec<1>(n, s, xb, residual, yb, dim, wb, eps, row_index);
    else if (per_thread <= 2) launch_vec<2>(n, s, xb, residual, yb, dim, wb, eps, row_index);
    else if (per_thread <= 4) launch_vec<4>(n, s, xb, residual, yb, dim, wb, eps, row_index);
    else if (per_thread <= 8) launch_vec<8>(n, s, xb, residual, yb, dim, wb, eps, row_index);
    else launch_vec<16>(n, s, xb, residual, yb, dim, wb, eps, row_index);
    return;
  }
  launch_pdl("residual_rmsnorm_kernel", residual_rmsnorm_kernel, dim3(static_cast<unsigned>(rows)), dim3(kThreads), 0, s,
             reinterpret_cast<const bf16*>(x), residual, reinterpret_cast<bf16*>(y), dim,
             reinterpret_cast<const bf16*>(w), eps, row_index);
}

void head_rmsnorm_cuda(uint16_t* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, int64_t token_stride,
                       const uint16_t* w, float eps, cuda_stream s) {
  if (n_tokens < 0 || n_heads <= 0 || head_dim <= 0 || token_stride < n_heads * head_dim || x == nullptr ||
      w == nullptr)
    throw error(errc::errc_invalid_argument, "head_rmsnorm_cuda: bad shape or null pointer");
  const int64_t rows = n_tokens * n_heads;
  if (rows == 0) return;
  const int warps = 8;
  launch_pdl("head_rmsnorm_kernel", head_rmsnorm_kernel, dim3(static_cast<unsigned>((rows + warps - 1) / warps)),
             dim3(warps * 32), 0, s, reinterpret_cast<bf16*>(x), rows, n_heads, head_dim, token_stride,
             reinterpret_cast<const bf16*>(w), eps);
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
