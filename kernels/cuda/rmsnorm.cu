// CUDA RMSNorm, plain and fused with the residual add. Memory-bound: each row
// is read once into registers (up to 4 vectors of 8 bf16 per thread, 16-byte
// accesses when dim % 8 == 0 and the pointers are aligned, else 2- or 1-wide),
// the sum of squares is reduced across the row's threads (shuffles, then
// shared memory when a row spans several warps) and the row is written once.
// Short rows (per-head q/k norm, head_dim 64..256) get a few threads each and
// many rows per block so no lanes idle; long rows (hidden 4096+) one block.
// The fused variant stores residual + x rounded to bf16 and normalises that
// stored value, as the bf16 torch model does.
#include <cstdint>
#include <string>

#include <cuda_bf16.h>

#include "config/errors.hpp"
#include "kernels/cuda/check.cuh"
#include "kernels/rmsnorm.hpp"

namespace troupe {

namespace {

using bf16 = __nv_bfloat16;
constexpr int kItems = 4;  // vectors per thread held in registers

template <int VEC>
__device__ inline void load_vec(const bf16* p, float* f) {
  if constexpr (VEC == 8) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const auto* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 t = __bfloat1622float2(h[i]);
      f[2 * i] = t.x;
      f[2 * i + 1] = t.y;
    }
  } else if constexpr (VEC == 2) {
    const float2 t = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
    f[0] = t.x;
    f[1] = t.y;
  } else {
    f[0] = __bfloat162float(*p);
  }
}

template <int VEC>
__device__ inline void store_vec(bf16* p, const float* f) {
  if constexpr (VEC == 8) {
    uint4 u;
    auto* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    *reinterpret_cast<uint4*>(p) = u;
  } else if constexpr (VEC == 2) {
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(f[0], f[1]);
  } else {
    *p = __float2bfloat16_rn(f[0]);
  }
}

// blockDim = (threads per row, rows per block). x and y may alias: each
// thread reads its elements of x before writing the same elements of y.
template <int VEC, bool RESID>
__global__ void rmsnorm_kernel(const bf16* x, bf16* residual, bf16* y, const bf16* __restrict__ w, int64_t rows,
                               int dim, float eps) {
  __shared__ float part[32];
  const int tpr = static_cast<int>(blockDim.x);
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool valid = row < rows;
  const int nv = dim / VEC;
  const int64_t base = row * dim;
  float v[kItems][VEC];
  float ss = 0.0f;
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    const int j = static_cast<int>(threadIdx.x) + it * tpr;
    if (valid && j < nv) {
      load_vec<VEC>(x + base + j * VEC, v[it]);
      if constexpr (RESID) {
        float r[VEC];
        load_vec<VEC>(residual + base + j * VEC, r);
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[it][e] = __bfloat162float(__float2bfloat16_rn(v[it][e] + r[e]));
        store_vec<VEC>(residual + base + j * VEC, v[it]);
      }
#pragma unroll
      for (int e = 0; e < VEC; ++e) ss += v[it][e] * v[it][e];
    }
  }
  // Reduce over the row's lanes of this warp (tpr < 32: groups of tpr lanes).
  for (int o = (tpr < 32 ? tpr : 32) / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (tpr > 32) {  // a row spans tpr / 32 warps: combine them
    const int first = static_cast<int>(threadIdx.y) * (tpr / 32);
    if ((threadIdx.x & 31) == 0) part[first + static_cast<int>(threadIdx.x) / 32] = ss;
    __syncthreads();
    ss = 0.0f;
    for (int i = 0; i < tpr / 32; ++i) ss += part[first + i];
  }
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    const int j = static_cast<int>(threadIdx.x) + it * tpr;
    if (valid && j < nv) {
      float wf[VEC];
      load_vec<VEC>(w + j * VEC, wf);
#pragma unroll
      for (int e = 0; e < VEC; ++e) wf[e] = wf[e] * (v[it][e] * inv);
      store_vec<VEC>(y + base + j * VEC, wf);
    }
  }
}

template <int VEC, bool RESID>
void launch(const uint16_t* x, uint16_t* residual, uint16_t* y, int64_t rows, int64_t dim, const uint16_t* w,
            float eps, cuda_stream s) {
  const int64_t nv = dim / VEC;
  int tpr = 4;
  while (tpr * kItems < nv) tpr *= 2;
  const int rpb = tpr < 128 ? 128 / tpr : 1;
  const int64_t blocks = (rows + rpb - 1) / rpb;
  rmsnorm_kernel<VEC, RESID><<<static_cast<unsigned>(blocks), dim3(tpr, rpb), 0, s>>>(
      reinterpret_cast<const bf16*>(x), reinterpret_cast<bf16*>(residual), reinterpret_cast<bf16*>(y),
      reinterpret_cast<const bf16*>(w), rows, static_cast<int>(dim), eps);
  TROUPE_CUDA_LAUNCH_CHECK("rmsnorm_kernel");
}

template <bool RESID>
void dispatch(const char* name, const uint16_t* x, uint16_t* residual, uint16_t* y, int64_t rows, int64_t dim,
              const uint16_t* w, float eps, cuda_stream s) {
  const std::string n(name);
  if (rows < 0) throw error(errc::errc_invalid_argument, n + ": rows must be >= 0");
  if (dim <= 0) throw error(errc::errc_invalid_argument, n + ": dim must be > 0");
  if (rows == 0) return;
  if (x == nullptr || y == nullptr || w == nullptr || (RESID && residual == nullptr))
    throw error(errc::errc_invalid_argument, n + ": x, y, w" + (RESID ? ", residual" : "") + " must be non-null");
  if (rows > (int64_t{1} << 31)) throw error(errc::errc_invalid_argument, n + ": rows exceeds 2^31");
  const uint64_t a = reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(residual) |
                     reinterpret_cast<uintptr_t>(y) | reinterpret_cast<uintptr_t>(w);
  if (dim % 8 == 0 && a % 16 == 0) {
    if (dim > 8 * kItems * 1024) throw error(errc::errc_invalid_argument, n + ": dim exceeds 32768");
    launch<8, RESID>(x, residual, y, rows, dim, w, eps, s);
  } else if (dim % 2 == 0 && a % 4 == 0) {
    if (dim > 2 * kItems * 1024) throw error(errc::errc_invalid_argument, n + ": dim exceeds 8192 (unaligned pointers)");
    launch<2, RESID>(x, residual, y, rows, dim, w, eps, s);
  } else {
    if (dim > kItems * 1024) throw error(errc::errc_invalid_argument, n + ": odd dim exceeds 4096");
    launch<1, RESID>(x, residual, y, rows, dim, w, eps, s);
  }
}

}  // namespace

void rmsnorm_cuda(const uint16_t* x, uint16_t* y, int64_t rows, int64_t dim, const uint16_t* w, float eps,
                  cuda_stream s) {
  dispatch<false>("rmsnorm_cuda", x, nullptr, y, rows, dim, w, eps, s);
}

void rmsnorm_residual_cuda(const uint16_t* x, uint16_t* residual, uint16_t* y, int64_t rows, int64_t dim,
                           const uint16_t* w, float eps, cuda_stream s) {
  if (residual != nullptr && (residual == y || residual == x))
    throw error(errc::errc_invalid_argument, "rmsnorm_residual_cuda: residual must not alias x or y");
  dispatch<true>("rmsnorm_residual_cuda", x, residual, y, rows, dim, w, eps, s);
}

}  // namespace troupe
