// CUDA SwiGLU. Purely elementwise and memory-bound, so one grid-stride kernel
// over vectors of 8 bf16 (16-byte loads of gate and up, one 16-byte store)
// serves both layouts: the flat one (one "row" of n elements) and the fused
// gate|up GEMM output ([rows][2 * inter], gate then up in each row), where a
// vector's row and column come from one division per 8 elements. Shapes or
// pointers that do not allow 16-byte vectors fall back to 2- or 1-wide.
#include <algorithm>
#include <cstdint>
#include <string>

#include <cuda_bf16.h>

#include "config/errors.hpp"
#include "kernels/cuda/check.cuh"
#include "kernels/swiglu.hpp"

namespace troupe {

namespace {

using bf16 = __nv_bfloat16;

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

// Row r, column c: gate at gate[r * in_stride + c], up at up[r * in_stride + c],
// out at out[r * out_stride + c]; cols elements per row. No __restrict__: the
// flat form allows out to alias gate or up (same element, same thread).
template <int VEC>
__global__ void swiglu_kernel(const bf16* gate, const bf16* up, bf16* out, int64_t rows, int64_t cols,
                              int64_t in_stride, int64_t out_stride) {
  const int64_t vpr = cols / VEC;
  const int64_t total = rows * vpr;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = rows == 1 ? 0 : i / vpr;
    const int64_t c = (i - r * vpr) * VEC;
    float g[VEC], u[VEC];
    load_vec<VEC>(gate + r * in_stride + c, g);
    load_vec<VEC>(up + r * in_stride + c, u);
#pragma unroll
    for (int e = 0; e < VEC; ++e) g[e] = g[e] / (1.0f + expf(-g[e])) * u[e];
    store_vec<VEC>(out + r * out_stride + c, g);
  }
}

int sm_count() {
  static int n = [] {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      v = 132;
    return v;
  }();
  return n;
}

void run(const uint16_t* gate, const uint16_t* up, uint16_t* out, int64_t rows, int64_t cols, int64_t in_stride,
         int64_t out_stride, cuda_stream s) {
  const uint64_t a = reinterpret_cast<uintptr_t>(gate) | reinterpret_cast<uintptr_t>(up) |
                     reinterpret_cast<uintptr_t>(out) | static_cast<uint64_t>(cols * 2) |
                     static_cast<uint64_t>(in_stride * 2) | static_cast<uint64_t>(out_stride * 2);
  const int vec = a % 16 == 0 ? 8 : a % 4 == 0 ? 2 : 1;
  const int64_t work = rows * (cols / vec);
  constexpr int threads = 256;
  // Enough blocks to fill the chip several times over; grid-stride beyond.
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>((work + threads - 1) / threads, sm_count() * 16));
  const auto* g = reinterpret_cast<const bf16*>(gate);
  const auto* u = reinterpret_cast<const bf16*>(up);
  auto* o = reinterpret_cast<bf16*>(out);
  if (vec == 8)
    swiglu_kernel<8><<<static_cast<unsigned>(blocks), threads, 0, s>>>(g, u, o, rows, cols, in_stride, out_stride);
  else if (vec == 2)
    swiglu_kernel<2><<<static_cast<unsigned>(blocks), threads, 0, s>>>(g, u, o, rows, cols, in_stride, out_stride);
  else
    swiglu_kernel<1><<<static_cast<unsigned>(blocks), threads, 0, s>>>(g, u, o, rows, cols, in_stride, out_stride);
  TROUPE_CUDA_LAUNCH_CHECK("swiglu_kernel");
}

}  // namespace

void swiglu_cuda(const uint16_t* gate, const uint16_t* up, uint16_t* out, int64_t n, cuda_stream s) {
  if (n < 0) throw error(errc::errc_invalid_argument, "swiglu_cuda: n must be >= 0");
  if (n == 0) return;
  if (gate == nullptr || up == nullptr || out == nullptr)
    throw error(errc::errc_invalid_argument, "swiglu_cuda: gate, up and out must be non-null");
  run(gate, up, out, 1, n, 0, 0, s);
}

void swiglu_fused_cuda(const uint16_t* gate_up, int64_t rows, int64_t inter, uint16_t* out, cuda_stream s) {
  if (rows < 0) throw error(errc::errc_invalid_argument, "swiglu_fused_cuda: rows must be >= 0");
  if (inter <= 0) throw error(errc::errc_invalid_argument, "swiglu_fused_cuda: inter must be > 0");
  if (rows == 0) return;
  if (gate_up == nullptr || out == nullptr)
    throw error(errc::errc_invalid_argument, "swiglu_fused_cuda: gate_up and out must be non-null");
  run(gate_up, gate_up + inter, out, rows, inter, 2 * inter, inter, s);
}

}  // namespace troupe
