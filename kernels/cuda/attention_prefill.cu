// Prefill attention on tensor cores over the paged KV cache, FlashAttention-2
// style; the fallback behind cuDNN's fused attention
// (attention_prefill_cudnn.cu), which attention_prefill_cuda tries first
// where libcudnn.so.9 loads (2.3x faster on an H100 at 8K-32K: this kernel
// holds 255 registers with 40 bytes of spills per thread at head_dim 128,
// reloads Q fragments from shared memory per key tile and uses mma.sync, not
// wgmma). Why it is built this way:
// - mma.sync m16n8k16 (bf16 in, fp32 accumulate) through inline PTX rather than
//   wgmma: it is simple enough to get right first time, runs on any sm_80+
//   part, and leaves a known headroom (an FA3-class wgmma/TMA kernel is the
//   next step where prefill attention dominates).
// - One block = 128 query rows of one head of one sequence, 4 warps of 32
//   rows each (two m16 tiles per warp: each K/V element read from shared
//   memory feeds 32 rows, which keeps ldmatrix traffic under the tensor
//   rate). Key tiles of 64 rows stream through a two-stage cp.async ring;
//   the online softmax keeps O, row max and row sum in registers, and P goes
//   from the S accumulators straight into A fragments (no shared round trip).
// - Keys are gathered row by row from the pages (page table lookup per row),
//   so chunks after a cached prefix, shuffled page tables and any page size
//   work; rows past the visible range are zero-filled and masked.
// - Shared tiles are XOR-swizzled by 16-byte chunk so ldmatrix reads of eight
//   rows hit eight different bank groups.
// - Masks (causal aligned bottom-right, sliding window, ragged end) are
//   applied only on the key tiles that need them; m-tiles run longest first
//   so the causal triangle's heavy blocks start early.
// - GQA: each block serves one query head; blocks of the same KV head run
//   next to each other and share its tiles through L2.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "config/errors.hpp"
#include "kernels/attention.hpp"
#include "kernels/cuda/check.cuh"

namespace troupe {

namespace {

constexpr int prefill_warps = 4;
constexpr int prefill_threads = prefill_warps * 32;
constexpr int prefill_block_n = 64;

struct prefill_params {
  const uint16_t* q;
  uint16_t* out;
  const int32_t* cu_seqlens_q;
  const int32_t* kv_lens;
  const int32_t* q_pos0;
  const int32_t* block_table;
  int64_t bt_stride;
  const unsigned char* kv_base;
  size_t page_stride;
  size_t k_offset;
  size_t v_offset;
  size_t row_bytes;
  int page_size;
  int n_heads;
  int group;
  int window;
  float scale_log2;
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte asynchronous copy global -> shared; `valid` false zero-fills.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// d += a * b, m16n8k16, bf16 inputs, fp32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Element offset of 16-byte chunk c of row r in a swizzled [rows][D] tile.
template <int D>
__device__ __forceinline__ int swz(int r, int c) {
  return r * D + ((c ^ (r & 7)) << 3);
}

template <int D, int MT>
__global__ void __launch_bounds__(prefill_threads) attention_prefill_kernel(const prefill_params p) {
  constexpr int BM = prefill_warps * 16 * MT;
  constexpr int BN = prefill_block_n;
  constexpr int CH = D / 8;  // 16-byte chunks per row
  constexpr int NT = BN / 8;  // n8 tiles of S
  constexpr int DT = D / 8;   // n8 tiles of O

  extern __shared__ __align__(128) uint16_t smem[];
  uint16_t* sq = smem;
  uint16_t* sk = sq + BM * D;
  uint16_t* sv = sk + 2 * BN * D;

  const int seq = blockIdx.z;
  const int head = blockIdx.y;
  const int q_begin = p.cu_seqlens_q[seq];
  const int q_len = p.cu_seqlens_q[seq + 1] - q_begin;
  const int m0 = (gridDim.x - 1 - blockIdx.x) * BM;  // longest causal rows first
  if (m0 >= q_len) return;
  const int kv_len = p.kv_lens[seq];
  const int qpos0 = p.q_pos0[seq];
  const int kvh = head / p.group;
  const int32_t* bt = p.block_table + static_cast<int64_t>(seq) * p.bt_stride;
  const int rows = min(BM, q_len - m0);
  const int q_lo = qpos0 + m0;
  const int q_hi = q_lo + rows - 1;
  const int k_end = min(kv_len, q_hi + 1);
  const int k_first = p.window > 0 ? max(0, q_lo - p.window + 1) : 0;
  const int k_begin = (k_first / BN) * BN;
  const int n_tiles = k_end > k_begin ? (k_end - k_begin + BN - 1) / BN : 0;

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;
  const int t = lane & 3;

  // Q tile (rows past the chunk are zero).
  for (int i = tid; i < BM * CH; i += prefill_threads) {
    const int r = i / CH, c = i % CH;
    const bool ok = r < rows;
    const uint16_t* src = ok ? p.q + (static_cast<int64_t>(q_begin + m0 + r) * p.n_heads + head) * D + c * 8 : p.q;
    cp_async16(smem_addr(sq + swz<D>(r, c)), src, ok);
  }
  const unsigned char* head_base = p.kv_base + static_cast<size_t>(kvh) * D * 2;
  auto load_kv = [&](int tile, int buf) {
    const int n0 = k_begin + tile * BN;
    for (int i = tid; i < BN * CH; i += prefill_threads) {
      const int r = i / CH, c = i % CH;
      const int pos = n0 + r;
      const bool ok = pos < k_end;
      const unsigned char* row = p.kv_base;
      if (ok) {
        const int pi = pos / p.page_size;
        const int slot = pos - pi * p.page_size;
        row = head_base + static_cast<size_t>(bt[pi]) * p.page_stride + static_cast<size_t>(slot) * p.row_bytes + c * 16;
      }
      cp_async16(smem_addr(sk + buf * BN * D + swz<D>(r, c)), ok ? row + p.k_offset : row, ok);
      cp_async16(smem_addr(sv + buf * BN * D + swz<D>(r, c)), ok ? row + p.v_offset : row, ok);
    }
  };
  if (n_tiles > 0) load_kv(0, 0);
  cp_async_commit();

  float o[MT][DT][4];
  float m_run[MT][2], l_run[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int j = 0; j < DT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[mt][j][e] = 0.0f;
    m_run[mt][0] = m_run[mt][1] = -INFINITY;
    l_run[mt][0] = l_run[mt][1] = 0.0f;
  }

  const int warp_row0 = warp * 16 * MT;
  for (int it = 0; it < n_tiles; ++it) {
    const int buf = it & 1;
    if (it + 1 < n_tiles) {
      load_kv(it + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int n0 = k_begin + it * BN;
    const uint16_t* kt = sk + buf * BN * D;
    const uint16_t* vt = sv + buf * BN * D;

    // S = Q K^T
    float s[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][j][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
        ldmatrix_x4(a[mt], smem_addr(sq + swz<D>(warp_row0 + mt * 16 + (lane & 15), kk * 2 + (lane >> 4))));
#pragma unroll
      for (int nb = 0; nb < BN / 16; ++nb) {
        uint32_t b[4];
        ldmatrix_x4(b, smem_addr(kt + swz<D>(nb * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1))));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16(s[mt][2 * nb], a[mt], b[0], b[1]);
          mma_bf16(s[mt][2 * nb + 1], a[mt], b[2], b[3]);
        }
      }
    }

    // Online softmax (base 2; scores pre-scaled by scale * log2 e).
    const bool need_mask = (n0 + BN - 1 > q_lo) || (n0 + BN > k_end) || (p.window > 0 && q_hi - n0 >= p.window);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int qp = q_lo + warp_row0 + mt * 16 + g + 8 * h;
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < NT; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float v = s[mt][j][2 * h + e] * p.scale_log2;
            if (need_mask) {
              const int kp = n0 + 8 * j + 2 * t + e;
              const bool vis = kp < k_end && kp <= qp && (p.window <= 0 || qp - kp < p.window);
              v = vis ? v : -INFINITY;
            }
            s[mt][j][2 * h + e] = v;
            mx = fmaxf(mx, v);
          }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m_run[mt][h], mx);
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;
        const float alpha = fast_exp2(m_run[mt][h] - m_use);
        m_run[mt][h] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < NT; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float pv = fast_exp2(s[mt][j][2 * h + e] - m_use);
            s[mt][j][2 * h + e] = pv;
            sum += pv;
          }
        }
        l_run[mt][h] = l_run[mt][h] * alpha + sum;
#pragma unroll
        for (int j = 0; j < DT; ++j) {
          o[mt][j][2 * h] *= alpha;
          o[mt][j][2 * h + 1] *= alpha;
        }
      }
    }

    // O += P V (P from the S accumulators, as bf16 A fragments).
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        a[mt][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        a[mt][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        a[mt][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        a[mt][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, smem_addr(vt + swz<D>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), dn * 2 + (lane >> 4))));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16(o[mt][2 * dn], a[mt], b[0], b[1]);
          mma_bf16(o[mt][2 * dn + 1], a[mt], b[2], b[3]);
        }
      }
    }
    __syncthreads();
  }

  // Normalize and store (rows of the chunk only).
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float l = l_run[mt][h];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      const int r = warp_row0 + mt * 16 + g + 8 * h;
      if (r < rows) {
        uint16_t* dst = p.out + (static_cast<int64_t>(q_begin + m0 + r) * p.n_heads + head) * D + 2 * t;
#pragma unroll
        for (int j = 0; j < DT; ++j)
          *reinterpret_cast<uint32_t*>(dst + 8 * j) = pack_bf16(o[mt][j][2 * h] * inv, o[mt][j][2 * h + 1] * inv);
      }
    }
  }
}

template <int D, int MT>
void launch_prefill(const prefill_params& p, int64_t max_q_len, int n_seqs, cuda_stream s) {
  constexpr int BM = prefill_warps * 16 * MT;
  constexpr size_t smem = static_cast<size_t>(BM + 4 * prefill_block_n) * D * 2;
  static const cudaError_t attr = cudaFuncSetAttribute(attention_prefill_kernel<D, MT>,
                                                       cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  TROUPE_CUDA_CHECK(attr);
  const dim3 grid(static_cast<unsigned>((max_q_len + BM - 1) / BM), static_cast<unsigned>(p.n_heads),
                  static_cast<unsigned>(n_seqs));
  attention_prefill_kernel<D, MT><<<grid, prefill_threads, smem, s>>>(p);
  TROUPE_CUDA_LAUNCH_CHECK("attention_prefill_kernel");
}

void fail(const std::string& what) { throw error(errc::errc_invalid_argument, "attention_prefill_cuda: " + what); }

}  // namespace

// kernels/cuda/attention_prefill_cudnn.cu: runs cuDNN's fused attention or
// returns false with the reason (path: 1 paged, 2 gathered).
bool attention_prefill_cudnn_run(const attention_batch_cuda& b, const paged_kv& kv, int64_t max_q_len, cuda_stream s,
                                 std::string* why, int* path);

namespace {
thread_local std::string last_path = "own";
thread_local std::string last_why;
}  // namespace

std::string attention_prefill_last_path(std::string* why) {
  if (why) *why = last_why;
  return last_path;
}

void attention_prefill_cuda(const attention_batch_cuda& b, const paged_kv& kv, int64_t max_q_len, cuda_stream s) {
  attention_prefill_cuda(b, kv, max_q_len, s, prefill_backend::prefill_backend_auto);
}

void attention_prefill_cuda(const attention_batch_cuda& b, const paged_kv& kv, int64_t max_q_len, cuda_stream s,
                            prefill_backend which) {
  if (kv.type != dtype::dtype_bf16) fail("kv.type must be bf16");
  if (kv.head_dim != 64 && kv.head_dim != 128) fail("kv.head_dim must be 64 or 128");
  if (kv.n_kv_heads <= 0 || b.n_heads <= 0 || b.n_heads % kv.n_kv_heads != 0)
    fail("n_heads must be a positive multiple of kv.n_kv_heads");
  if (kv.page_size <= 0 || kv.page_size > (int64_t{1} << 30)) fail("kv.page_size must be positive");
  if (b.n_seqs < 0 || b.n_seqs > 65535) fail("n_seqs must be in [0, 65535]");
  if (max_q_len < 0 || max_q_len > (int64_t{1} << 30)) fail("max_q_len out of range");
  if (b.sliding_window < 0 || b.sliding_window > (int64_t{1} << 30)) fail("sliding_window out of range");
  if (b.n_seqs == 0 || max_q_len == 0) return;
  if (b.q == nullptr || b.out == nullptr || b.cu_seqlens_q == nullptr || b.kv_lens == nullptr || b.q_pos0 == nullptr ||
      b.block_table == nullptr || kv.base == nullptr)
    fail("q, out, cu_seqlens_q, kv_lens, q_pos0, block_table and kv.base must be non-null");
  if (b.block_table_stride <= 0) fail("block_table_stride must be positive");
  const auto align = reinterpret_cast<uintptr_t>(kv.base) | kv.page_stride | kv.k_offset | kv.v_offset |
                     reinterpret_cast<uintptr_t>(b.q) | reinterpret_cast<uintptr_t>(b.out);
  if (align % 16 != 0) fail("kv.base, kv.page_stride, kv.k_offset, kv.v_offset, q and out must be 16-byte aligned");
  if (which != prefill_backend::prefill_backend_own) {
    std::string why;
    int path = 0;
    if (attention_prefill_cudnn_run(b, kv, max_q_len, s, &why, &path)) {
      last_path = path == 1 ? "cudnn" : path == 2 ? "cudnn-gathered" : "cudnn-dense";
      last_why = why;
      return;
    }
    if (which == prefill_backend::prefill_backend_cudnn)
      throw error(errc::errc_unsupported, "attention_prefill_cuda: cuDNN cannot run this: " + why);
    last_why = why;
  } else {
    last_why = "own kernel requested";
  }
  last_path = "own";
  prefill_params p{};
  p.q = b.q;
  p.out = b.out;
  p.cu_seqlens_q = b.cu_seqlens_q;
  p.kv_lens = b.kv_lens;
  p.q_pos0 = b.q_pos0;
  p.block_table = b.block_table;
  p.bt_stride = b.block_table_stride;
  p.kv_base = reinterpret_cast<const unsigned char*>(kv.base);
  p.page_stride = kv.page_stride;
  p.k_offset = kv.k_offset;
  p.v_offset = kv.v_offset;
  p.row_bytes = static_cast<size_t>(kv.n_kv_heads * kv.head_dim) * 2;
  p.page_size = static_cast<int>(kv.page_size);
  p.n_heads = static_cast<int>(b.n_heads);
  p.group = static_cast<int>(b.n_heads / kv.n_kv_heads);
  p.window = static_cast<int>(b.sliding_window);
  p.scale_log2 = b.scale * 1.4426950408889634f;
  if (kv.head_dim == 128)
    launch_prefill<128, 2>(p, max_q_len, static_cast<int>(b.n_seqs), s);
  else
    launch_prefill<64, 2>(p, max_q_len, static_cast<int>(b.n_seqs), s);
}

}  // namespace troupe
