// Decode GEMV on the tensor cores (see kernels/gemv.hpp for the contract).
//
// Bound: every byte of W is read once and m <= 16 tokens reuse it, so the
// time floor is W bytes / HBM bandwidth; the arithmetic (2*m*n*k) is tiny.
// What it takes to reach the floor: enough 16-byte loads in flight on every
// SM (Little's law: ~3 TB/s * ~1 us latency = several MB across the chip),
// W bytes that bypass L1 (streamed once) while x stays cached, and no
// instruction bottleneck for m up to 16.
//
// Layout of the work. A warp owns TT tiles of 16 weight rows (output
// features) and a slice of k; the WARPS warps of a block split k between
// them and add their partial sums through shared memory at the end, so even
// o_proj (n = 4096: 256 tiles) keeps every SM busy without a cross-block
// reduction. Per step a lane loads 16 bytes (8 consecutive k) of weight rows
// g and g+8 of each tile (g = lane / 4; the 4 lanes of a row cover 32
// consecutive k, 64 bytes) and 16 bytes of x for tokens g (and 8 + g). The
// loads of U steps of consecutive k, W and x together, are issued as one
// batch at the end of the previous batch's products, so one memory latency
// covers them (x loaded next to its mma instead let ptxas interleave the x
// loads with the products, one L1/L2 latency each). The products run on
// mma.sync m16n8k16 (A = 16 weight rows x 16 k, B = 16 k x 8 tokens): a dot
// product does not care in which order k is summed, so the 8 k a lane loaded
// are fed to the fragment positions that lane owns (k 2q, 2q+1, 2q+8, 2q+9
// of two mma), the same permutation for A and B; no shuffles, no shared
// memory staging. For m <= 8 one token tile (NT = 1), else two.
//
// The fused SwiGLU variant gives each warp the gate tile(s) and the up
// tile(s) of the same output columns, so the epilogue has both sums.
//
// Programmatic dependent launch (optional): every block triggers its
// dependents once its loads are done (they still wait for this grid's
// completion before reading its output), and issues its first weight loads
// before griddepcontrol.wait (W is static), x only after it; so a kernel
// launched with the attribute loads weights while the previous one drains.
#include "kernels/gemv.hpp"

#include <atomic>
#include <cstdint>
#include <string>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "config/errors.hpp"
#include "kernels/cuda/check.cuh"

namespace troupe {

namespace {

enum class epi_kind : int { epi_bf16 = 0, epi_f32 = 1, epi_swiglu = 2 };

struct gemv_args {
  const uint16_t* x;     // [m][k]
  const uint16_t* w;     // [rows][k]: n rows, or 2 * n (gate then up) for SwiGLU
  const uint16_t* bias;  // [rows] or null
  void* y;               // [m][n], bf16 or fp32
  int m, k, n;           // n = output columns (inter for SwiGLU)
};

// 16 bytes of W, streamed: no L1 allocation (read once), L2 prefetch of the
// surrounding 256 bytes (the warp reads them next). Zero when !pred. volatile
// keeps the first loads ahead of griddepcontrol.wait.
__device__ __forceinline__ uint4 ld_weight(const uint16_t* p, bool pred) {
  uint4 r;
  asm volatile(
      "{\n\t.reg .pred p;\n\t"
      "setp.ne.b32 p, %5, 0;\n\t"
      "mov.b32 %0, 0;\n\tmov.b32 %1, 0;\n\tmov.b32 %2, 0;\n\tmov.b32 %3, 0;\n\t"
      "@p ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];\n\t}"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p), "r"(static_cast<int>(pred)));
  return r;
}

// 16 bytes of x: read by every block, so cached in L1. Zero when !pred.
__device__ __forceinline__ uint4 ld_act(const uint16_t* p, bool pred) {
  uint4 r;
  asm volatile(
      "{\n\t.reg .pred p;\n\t"
      "setp.ne.b32 p, %5, 0;\n\t"
      "mov.b32 %0, 0;\n\tmov.b32 %1, 0;\n\tmov.b32 %2, 0;\n\tmov.b32 %3, 0;\n\t"
      "@p ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];\n\t}"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p), "r"(static_cast<int>(pred)));
  return r;
}

// c += A * B, A 16x16 bf16 (a0..a3), B 16x8 bf16 (b0, b1), c 16x8 fp32.
__device__ __forceinline__ void mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ float bf16_bits_to_float(uint16_t h) {
  return __uint_as_float(static_cast<uint32_t>(h) << 16);
}

// NT token tiles of 8, RT row tiles of 16 output columns per block (the
// SwiGLU kernel loads 2 * RT: gate and up), U steps of 32 k per load batch,
// WARPS warps splitting k.
template <int NT, int RT, int U, int WARPS, epi_kind E>
__global__ void __launch_bounds__(WARPS * 32) gemv_kernel(const gemv_args a) {
  constexpr bool kSwiglu = E == epi_kind::epi_swiglu;
  constexpr int TT = kSwiglu ? 2 * RT : RT;
  constexpr int COLS = 16 * RT;
  // [warp][tile][token][row in tile]; 17 floats per token row against bank conflicts.
  __shared__ float red[WARPS][TT][NT * 8][17];

  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int col0 = static_cast<int>(blockIdx.x) * COLS;
  const int64_t k = a.k;

  const uint16_t* wp[TT][2];
  bool wv[TT][2];
#pragma unroll
  for (int t = 0; t < TT; ++t)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int c = col0 + (t % RT) * 16 + h * 8 + g;
      wv[t][h] = c < a.n;
      const int64_t r = (kSwiglu && t >= RT) ? int64_t{a.n} + c : int64_t{c};
      wp[t][h] = a.w + (wv[t][h] ? r : 0) * k + 8 * q;
    }
  const uint16_t* xp[NT];
  bool xv[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int tok = j * 8 + g;
    xv[j] = tok < a.m;
    xp[j] = a.x + (xv[j] ? tok : 0) * k + 8 * q;
  }

  float acc[TT][NT][4];
#pragma unroll
  for (int t = 0; t < TT; ++t)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[t][j][i] = 0.0f;

  const int steps = (a.k + 31) >> 5;
  const int iters = (steps + WARPS * U - 1) / (WARPS * U);
  uint4 wr[U][TT][2], xr[U][NT];
  // Iteration it covers steps (it * WARPS + warp) * U + u of 32 k each.
  auto load = [&](int it, bool with_w, bool with_x) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int kk = ((it * WARPS + warp) * U + u) * 32;
      const bool ok = kk + 8 * q < a.k;
      if (with_w) {
#pragma unroll
        for (int t = 0; t < TT; ++t)
#pragma unroll
          for (int h = 0; h < 2; ++h) wr[u][t][h] = ld_weight(wp[t][h] + kk, ok && wv[t][h]);
      }
      if (with_x) {
#pragma unroll
        for (int j = 0; j < NT; ++j) xr[u][j] = ld_act(xp[j] + kk, ok && xv[j]);
      }
    }
  };

  load(0, true, false);  // W is static: load it before waiting for the previous kernel
  pdl_wait();
  load(0, false, true);
  for (int it = 0; it < iters; ++it) {
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int t = 0; t < TT; ++t)
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          // k 8q+0,1 -> fragment k 2q,2q+1 and k 8q+2,3 -> 2q+8,2q+9 of the first
          // mma; k 8q+4..7 likewise of the second (rows g in [0], g+8 in [1]).
          mma_bf16(acc[t][j], wr[u][t][0].x, wr[u][t][1].x, wr[u][t][0].y, wr[u][t][1].y, xr[u][j].x, xr[u][j].y);
          mma_bf16(acc[t][j], wr[u][t][0].z, wr[u][t][1].z, wr[u][t][0].w, wr[u][t][1].w, xr[u][j].z, xr[u][j].w);
        }
    // The next batch's W and x together, so one latency covers both.
    if (it + 1 < iters) load(it + 1, true, true);
  }
  // Dependents may launch now (they read this kernel's output only after their
  // griddepcontrol.wait, which waits for this grid to complete). Not earlier:
  // dependents launched at the start took resident slots while this grid ran
  // and unbalanced their own single-wave grids (8B down: 93% -> 84% of copy).
  pdl_trigger();

  // Accumulator element (row g or g+8, token 2q or 2q+1) to shared memory.
#pragma unroll
  for (int t = 0; t < TT; ++t)
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      red[warp][t][j * 8 + 2 * q][g] = acc[t][j][0];
      red[warp][t][j * 8 + 2 * q + 1][g] = acc[t][j][1];
      red[warp][t][j * 8 + 2 * q][g + 8] = acc[t][j][2];
      red[warp][t][j * 8 + 2 * q + 1][g + 8] = acc[t][j][3];
    }
  __syncthreads();

  // One output per thread and step, consecutive threads on consecutive columns.
  for (int e = static_cast<int>(threadIdx.x); e < COLS * a.m; e += WARPS * 32) {
    const int r = e % COLS, tok = e / COLS, c = col0 + r;
    if (c >= a.n) continue;
    const int t = r >> 4, rr = r & 15;
    float v = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) v += red[w][t][tok][rr];
    if (a.bias != nullptr) v += bf16_bits_to_float(a.bias[c]);
    const int64_t at = int64_t{tok} * a.n + c;
    if constexpr (kSwiglu) {
      float u = 0.0f;
#pragma unroll
      for (int w = 0; w < WARPS; ++w) u += red[w][t + RT][tok][rr];
      if (a.bias != nullptr) u += bf16_bits_to_float(a.bias[a.n + c]);
      v = v / (1.0f + expf(-v)) * u;
    }
    if constexpr (E == epi_kind::epi_f32)
      static_cast<float*>(a.y)[at] = v;
    else
      static_cast<__nv_bfloat16*>(a.y)[at] = __float2bfloat16_rn(v);
  }
}

using kernel_fn = void (*)(gemv_args);

struct config {
  const char* name;
  int rt, u, warps;
  kernel_fn fn[2][3];  // [token tiles - 1][epi_kind]; null where not built
};

template <int RT, int U, int WARPS, bool kSwiglu>
config make_config(const char* name) {
  config c{name, RT, U, WARPS, {}};
  c.fn[0][0] = gemv_kernel<1, RT, U, WARPS, epi_kind::epi_bf16>;
  c.fn[0][1] = gemv_kernel<1, RT, U, WARPS, epi_kind::epi_f32>;
  c.fn[1][0] = gemv_kernel<2, RT, U, WARPS, epi_kind::epi_bf16>;
  c.fn[1][1] = gemv_kernel<2, RT, U, WARPS, epi_kind::epi_f32>;
  if constexpr (kSwiglu) {
    c.fn[0][2] = gemv_kernel<1, RT, U, WARPS, epi_kind::epi_swiglu>;
    c.fn[1][2] = gemv_kernel<2, RT, U, WARPS, epi_kind::epi_swiglu>;
  }
  return c;
}

// The configurations built. The SwiGLU kernel loads twice the rows, so the
// register-heavy r2u4 has none (it would spill), nor the ones whose
// reduction buffer would pass 48 KB of static shared memory.
const config* configs() {
  static const config table[] = {
      make_config<1, 4, 8, true>("r1u4w8"),  make_config<1, 4, 16, true>("r1u4w16"),
      make_config<2, 2, 8, true>("r2u2w8"),  make_config<1, 8, 8, true>("r1u8w8"),
      make_config<2, 4, 8, false>("r2u4w8"), make_config<1, 2, 16, true>("r1u2w16"),
      make_config<4, 2, 8, false>("r4u2w8"), make_config<2, 2, 16, false>("r2u2w16"),
  };
  return table;
}
constexpr int kConfigCount = 8;

// Multiprocessors of the current device (cached per device).
int sm_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];
  int dev = 0;
  TROUPE_CUDA_CHECK(cudaGetDevice(&dev));
  int n = dev < kMaxDevices ? cache[dev].load(std::memory_order_relaxed) : 0;
  if (n == 0) {
    TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    if (dev < kMaxDevices) cache[dev].store(n, std::memory_order_relaxed);
  }
  return n;
}

// The default configuration, from the sweep of benches/cuda_gemv.cpp
// --sweep on the H100 (2026-11-22): r1u4w8 (16 rows, 8 warps
// splitting k, 4 steps = 8 16-byte weight loads per lane in flight; 4 blocks
// resident per SM at m <= 8) is the best or within noise of it for every
// 8B and 1B shape, plain and fused SwiGLU, m = 1..16, except where the grid
// has fewer 16-row tiles than SMs (1B o_proj and down, n = 2048): there
// r1u2w16's 16 warps per tile put more loads on the SMs that have work
// (48% vs 44% of copy bandwidth on o_proj, 75% vs 73% on down).
int pick_config(int64_t cols, bool swiglu) {
  enum : int { r1u4w8 = 0, r1u2w16 = 5 };
  if (swiglu) return r1u4w8;
  return (cols + 15) / 16 < sm_count() ? r1u2w16 : r1u4w8;
}

std::string shape_text(int64_t m, int64_t k, int64_t n) {
  return " (m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k) + ")";
}

void launch(const char* who, epi_kind e, const uint16_t* x, int64_t m, int64_t k, const uint16_t* w, int64_t cols,
            const uint16_t* bias, void* y, cuda_stream s, const gemv_options& opt) {
  if (x == nullptr || w == nullptr || y == nullptr)
    throw error(errc::errc_invalid_argument, std::string(who) + ": x, w and y must be non-null");
  const int64_t rows = e == epi_kind::epi_swiglu ? 2 * cols : cols;
  if (!gemv_supported(x, m, k, w, rows))
    throw error(errc::errc_invalid_argument,
                std::string(who) + ": unsupported problem" + shape_text(m, k, rows) +
                    ": needs 1 <= m <= 16, k a positive multiple of 8, n and k < 2^31, x and w 16-byte aligned");
  if (opt.config < -1 || opt.config >= kConfigCount)
    throw error(errc::errc_invalid_argument, std::string(who) + ": config " + std::to_string(opt.config) +
                                                 " out of range [-1, " + std::to_string(kConfigCount) + ")");
  const int ci = opt.config >= 0 ? opt.config : pick_config(cols, e == epi_kind::epi_swiglu);
  const config& c = configs()[ci];
  const kernel_fn fn = c.fn[m > 8 ? 1 : 0][static_cast<int>(e)];
  if (fn == nullptr)
    throw error(errc::errc_invalid_argument, std::string(who) + ": config " + c.name + " has no such kernel");
  const gemv_args args{x, w, bias, y, static_cast<int>(m), static_cast<int>(k), static_cast<int>(cols)};
  cudaLaunchConfig_t lc{};
  lc.gridDim = dim3(static_cast<unsigned>((cols + 16 * c.rt - 1) / (16 * c.rt)));
  lc.blockDim = dim3(static_cast<unsigned>(32 * c.warps));
  lc.dynamicSmemBytes = 0;
  lc.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  if (opt.pdl) {
    lc.attrs = attr;
    lc.numAttrs = 1;
  }
  TROUPE_CUDA_CHECK(cudaLaunchKernelEx(&lc, fn, args));
}

}  // namespace

bool gemv_supported(const void* x, int64_t m, int64_t k, const void* w, int64_t n) {
  return m >= 1 && m <= gemv_max_m && n >= 1 && n <= INT32_MAX && k >= 8 && k <= INT32_MAX && k % 8 == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

int gemv_config_count() { return kConfigCount; }

const char* gemv_config_name(int i) {
  return i >= 0 && i < kConfigCount ? configs()[i].name : "?";
}

bool gemv_config_has_swiglu(int i) { return i >= 0 && i < kConfigCount && configs()[i].fn[0][2] != nullptr; }

void gemv_bf16(const uint16_t* x, int64_t m, int64_t k, const uint16_t* w, int64_t n, const uint16_t* bias,
               uint16_t* y, cuda_stream s, const gemv_options& opt) {
  launch("gemv_bf16", epi_kind::epi_bf16, x, m, k, w, n, bias, y, s, opt);
}

void gemv_bf16_f32(const uint16_t* x, int64_t m, int64_t k, const uint16_t* w, int64_t n, const uint16_t* bias,
                   float* y, cuda_stream s, const gemv_options& opt) {
  launch("gemv_bf16_f32", epi_kind::epi_f32, x, m, k, w, n, bias, y, s, opt);
}

void gemv_swiglu_bf16(const uint16_t* x, int64_t m, int64_t k, const uint16_t* w_gate_up, int64_t inter,
                      const uint16_t* bias, uint16_t* act, cuda_stream s, const gemv_options& opt) {
  if (inter < 1 || inter > INT32_MAX / 2)
    throw error(errc::errc_invalid_argument, "gemv_swiglu_bf16: inter must be in [1, 2^30)" + shape_text(m, k, inter));
  launch("gemv_swiglu_bf16", epi_kind::epi_swiglu, x, m, k, w_gate_up, inter, bias, act, s, opt);
}

}  // namespace troupe
