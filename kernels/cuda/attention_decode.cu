// Decode attention over the paged KV cache, flash-decoding style (split-K).
// Why it is built this way:
// - One query per sequence makes decode attention a pure stream over K and
//   V: the kernel must read each byte once at copy speed. A block owns one
//   (sequence, kv head, split) and computes every query head of the GQA group
//   from the same registers, so a KV head's rows are read once per step, not
//   once per query head.
// - Long contexts are cut into splits so that even batch 1 fills the chip;
//   each split leaves fp32 (max, sum, unnormalized acc) in a workspace and a
//   small second kernel combines them. The split length is derived on the
//   device from kv_len and the host's max_splits bound, so the grid depends
//   only on batch size and max_splits and the launch is graph-capturable.
// - Tensor cores are not needed: at one query token there are only
//   2 * group FLOPs per loaded bf16 element, well under the fp32 rate. Each
//   lane holds 8 dims (one 16-byte load) of a key; a key's D/8 lanes reduce
//   its dot product with shuffles; every lane group keeps its own online
//   softmax state (no cross-group shuffles in the loop) and states are merged
//   once at the end, inside the warp by shuffles, across warps in shared
//   memory.
// - Each lane has 2*U independent 16-byte loads in flight per iteration and
//   the page ids of the next iteration are fetched before this one's math,
//   so the page-table lookup does not serialize with the K/V loads.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "config/errors.hpp"
#include "kernels/attention.hpp"
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/pdl.cuh"

namespace troupe {

namespace {

constexpr int decode_warps = 4;
constexpr int decode_threads = decode_warps * 32;
constexpr int decode_max_splits = 256;
constexpr int decode_split_align = 32;  // keys
constexpr int decode_blocks_per_sm = 4;  // resident split blocks per SM (launch bounds)

struct decode_params {
  const uint16_t* q;
  uint16_t* out;
  const int32_t* kv_lens;
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
  int group_chunks;  // blocks per kv head along the group (group > heads per block)
  int window;
  int max_splits;
  float scale_log2;
  float* ws_acc;  // [n_seqs][n_heads][max_splits][D]
  float* ws_ml;   // [n_seqs][n_heads][max_splits][2]
};

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Visible key range [lo, kv_len) of the query at kv_len - 1, its split length and count.
struct split_plan {
  int lo, chunk, n_splits;
};

__device__ __forceinline__ split_plan plan_splits(int kv_len, int window, int max_splits) {
  split_plan sp{0, 0, 0};
  if (kv_len <= 0) return sp;
  sp.lo = window > 0 ? max(0, kv_len - window) : 0;
  const int n_keys = kv_len - sp.lo;
  const int per = (n_keys + max_splits - 1) / max_splits;
  sp.chunk = (per + decode_split_align - 1) / decode_split_align * decode_split_align;
  sp.n_splits = (n_keys + sp.chunk - 1) / sp.chunk;
  return sp;
}

__device__ __forceinline__ void bf16x8_to_f32(const uint4& v, float (&f)[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

template <int D, int GT, int U>
__global__ void __launch_bounds__(decode_threads, GT >= 8 ? decode_blocks_per_sm / 2 : decode_blocks_per_sm) attention_decode_split_kernel(const decode_params p) {
  pdl_wait();
  constexpr int LPK = D / 8;     // lanes per key
  constexpr int KPW = 32 / LPK;  // keys per warp step
  constexpr int KPI = KPW * U;   // keys per warp iteration
  constexpr int STRIDE = KPI * decode_warps;

  __shared__ float sm_m[decode_warps][GT];
  __shared__ float sm_l[decode_warps][GT];
  __shared__ float sm_acc[decode_warps][GT][D];

  const int split = blockIdx.x;
  const int kvh = blockIdx.y / p.group_chunks;
  const int gc = blockIdx.y % p.group_chunks;
  const int seq = blockIdx.z;
  const int h0 = kvh * p.group + gc * GT;
  const int ng = min(GT, p.group - gc * GT);
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int kg = lane / LPK;
  const int dl = lane % LPK;

  // The query does not depend on kv_len: its loads overlap the length's.
  uint4 q_raw[GT];
#pragma unroll
  for (int g = 0; g < GT; ++g)
    q_raw[g] = g < ng ? *reinterpret_cast<const uint4*>(p.q + (static_cast<int64_t>(seq) * p.n_heads + h0 + g) * D + dl * 8)
                      : make_uint4(0, 0, 0, 0);
  const int kv_len = p.kv_lens[seq];
  const split_plan sp = plan_splits(kv_len, p.window, p.max_splits);
  if (split >= sp.n_splits) return;
  const int k0 = sp.lo + split * sp.chunk;
  const int k1 = min(kv_len, k0 + sp.chunk);

  float q[GT][8];
#pragma unroll
  for (int g = 0; g < GT; ++g) {
    bf16x8_to_f32(q_raw[g], q[g]);
#pragma unroll
    for (int i = 0; i < 8; ++i) q[g][i] *= p.scale_log2;
  }

  float m[GT], l[GT], acc[GT][8];
#pragma unroll
  for (int g = 0; g < GT; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[g][i] = 0.0f;
  }

  const int32_t* bt = p.block_table + static_cast<int64_t>(seq) * p.bt_stride;
  const unsigned char* head_base = p.kv_base + static_cast<size_t>(kvh) * D * 2 + dl * 16;
  auto page_of = [&](int pos) -> const unsigned char* {
    if (pos >= k1) return nullptr;
    const int pi = pos / p.page_size;
    const int slot = pos - pi * p.page_size;
    return head_base + static_cast<size_t>(bt[pi]) * p.page_stride + static_cast<size_t>(slot) * p.row_bytes;
  };

  const unsigned char* row[U];
#pragma unroll
  for (int u = 0; u < U; ++u) row[u] = page_of(k0 + warp * KPI + u * KPW + kg);

  for (int base = k0 + warp * KPI; base < k1; base += STRIDE) {
    uint4 kr[U], vr[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (row[u] != nullptr) {
        kr[u] = __ldg(reinterpret_cast<const uint4*>(row[u] + p.k_offset));
        vr[u] = __ldg(reinterpret_cast<const uint4*>(row[u] + p.v_offset));
      } else {
        kr[u] = make_uint4(0, 0, 0, 0);
        vr[u] = make_uint4(0, 0, 0, 0);
      }
    }
    bool ok[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      ok[u] = row[u] != nullptr;
      row[u] = page_of(base + STRIDE + u * KPW + kg);
    }

    float s[GT][U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[8];
      bf16x8_to_f32(kr[u], kf);
#pragma unroll
      for (int g = 0; g < GT; ++g) {
        float d = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) d = fmaf(q[g][i], kf[i], d);
#pragma unroll
        for (int off = 1; off < LPK; off <<= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
        s[g][u] = ok[u] ? d : -INFINITY;
      }
    }
    float mu[GT];
#pragma unroll
    for (int g = 0; g < GT; ++g) {
      float mx = m[g];
#pragma unroll
      for (int u = 0; u < U; ++u) mx = fmaxf(mx, s[g][u]);
      mu[g] = mx == -INFINITY ? 0.0f : mx;
      const float alpha = fast_exp2(m[g] - mu[g]);
      m[g] = mx;
      l[g] *= alpha;
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[g][i] *= alpha;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float vf[8];
      bf16x8_to_f32(vr[u], vf);
#pragma unroll
      for (int g = 0; g < GT; ++g) {
        const float pw = fast_exp2(s[g][u] - mu[g]);
        l[g] += pw;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[g][i] = fmaf(pw, vf[i], acc[g][i]);
      }
    }
  }

  // Merge the key groups of the warp (lanes with the same dims), then the warps.
#pragma unroll
  for (int off = LPK; off < 32; off <<= 1) {
#pragma unroll
    for (int g = 0; g < GT; ++g) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[g], off);
      const float lo = __shfl_xor_sync(0xffffffffu, l[g], off);
      const float mx = fmaxf(m[g], mo);
      const float mu = mx == -INFINITY ? 0.0f : mx;
      const float a = fast_exp2(m[g] - mu), b = fast_exp2(mo - mu);
      l[g] = l[g] * a + lo * b;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float ao = __shfl_xor_sync(0xffffffffu, acc[g][i], off);
        acc[g][i] = acc[g][i] * a + ao * b;
      }
      m[g] = mx;
    }
  }
  if (kg == 0) {
#pragma unroll
    for (int g = 0; g < GT; ++g) {
      if (dl == 0) {
        sm_m[warp][g] = m[g];
        sm_l[warp][g] = l[g];
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) sm_acc[warp][g][dl * 8 + i] = acc[g][i];
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < GT * D; idx += decode_threads) {
    const int g = idx / D, d = idx % D;
    if (g >= ng) break;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < decode_warps; ++w) mx = fmaxf(mx, sm_m[w][g]);
    const float mu = mx == -INFINITY ? 0.0f : mx;
    float a = 0.0f, lsum = 0.0f;
#pragma unroll
    for (int w = 0; w < decode_warps; ++w) {
      const float sc = fast_exp2(sm_m[w][g] - mu);
      a += sc * sm_acc[w][g][d];
      lsum += sc * sm_l[w][g];
    }
    const int64_t slot = (static_cast<int64_t>(seq) * p.n_heads + h0 + g) * p.max_splits + split;
    p.ws_acc[slot * D + d] = a;
    if (d == 0) {
      p.ws_ml[slot * 2] = mx;
      p.ws_ml[slot * 2 + 1] = lsum;
    }
  }
}

// One block per (head, sequence): weights the splits' partials by
// exp2(m_s - max) and normalizes. Every split's (m, l) is read by its own
// thread and the acc rows are spread over combine_threads / D groups with
// eight loads in flight each: a loop of dependent reads over up to 256
// splits would cost a cache round trip per split.
constexpr int combine_threads = 512;

template <int D>
__global__ void __launch_bounds__(combine_threads) attention_decode_combine_kernel(const decode_params p) {
  pdl_wait();
  constexpr int J = combine_threads / D;  // split groups
  constexpr int W = combine_threads / 32;
  __shared__ float sm_w[decode_max_splits];
  __shared__ float sm_red[W];
  __shared__ float sm_num[J][D];
  const int head = blockIdx.x;
  const int seq = blockIdx.y;
  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const split_plan sp = plan_splits(p.kv_lens[seq], p.window, p.max_splits);
  uint16_t* dst = p.out + (static_cast<int64_t>(seq) * p.n_heads + head) * D;
  if (sp.n_splits == 0) {
    if (tid < D) dst[tid] = 0;
    return;
  }
  const int64_t slot0 = (static_cast<int64_t>(seq) * p.n_heads + head) * p.max_splits;
  const bool mine = tid < sp.n_splits;
  const float m = mine ? p.ws_ml[(slot0 + tid) * 2] : -INFINITY;
  const float l = mine ? p.ws_ml[(slot0 + tid) * 2 + 1] : 0.0f;
  float mx = m;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  if (lane == 0) sm_red[warp] = mx;
  __syncthreads();
  mx = sm_red[0];
#pragma unroll
  for (int w = 1; w < W; ++w) mx = fmaxf(mx, sm_red[w]);
  const float wt = mine ? fast_exp2(m - mx) : 0.0f;
  if (mine) sm_w[tid] = wt;
  float den = wt * l;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) den += __shfl_xor_sync(0xffffffffu, den, off);
  __syncthreads();  // everyone has read sm_red (max) and sm_w is complete
  if (lane == 0) sm_red[warp] = den;
  const int j = tid / D, d = tid % D;
  float num = 0.0f;
  for (int s0 = j; s0 < sp.n_splits; s0 += 8 * J) {
    float v[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const int s = s0 + k * J;
      v[k] = s < sp.n_splits ? p.ws_acc[(slot0 + s) * D + d] : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const int s = s0 + k * J;
      if (s < sp.n_splits) num = fmaf(sm_w[s], v[k], num);
    }
  }
  sm_num[j][d] = num;
  __syncthreads();
  if (tid < D) {
    float total = 0.0f, dsum = 0.0f;
#pragma unroll
    for (int g = 0; g < J; ++g) total += sm_num[g][tid];
#pragma unroll
    for (int w = 0; w < W; ++w) dsum += sm_red[w];
    const __nv_bfloat16 o = __float2bfloat16_rn(dsum > 0.0f ? total / dsum : 0.0f);
    dst[tid] = *reinterpret_cast<const uint16_t*>(&o);
  }
}

template <int D, int GT>
void launch_decode(const decode_params& p, int n_kv_heads, int n_seqs, cuda_stream s) {
  constexpr int U = 4;  // <= 128 registers (4 blocks per SM) up to GT = 4; GT = 8 needs ~250
  const dim3 grid(static_cast<unsigned>(p.max_splits), static_cast<unsigned>(n_kv_heads * p.group_chunks),
                  static_cast<unsigned>(n_seqs));
  launch_pdl("attention_decode_split_kernel", attention_decode_split_kernel<D, GT, U>, grid, dim3(decode_threads), 0, s, p);
  launch_pdl("attention_decode_combine_kernel", attention_decode_combine_kernel<D>,
             dim3(static_cast<unsigned>(p.n_heads), static_cast<unsigned>(n_seqs)), dim3(combine_threads), 0, s, p);
}

template <int D>
void launch_decode_d(const decode_params& p, int gt, int n_kv_heads, int n_seqs, cuda_stream s) {
  switch (gt) {
    case 1: launch_decode<D, 1>(p, n_kv_heads, n_seqs, s); break;
    case 2: launch_decode<D, 2>(p, n_kv_heads, n_seqs, s); break;
    case 4: launch_decode<D, 4>(p, n_kv_heads, n_seqs, s); break;
    default: launch_decode<D, 8>(p, n_kv_heads, n_seqs, s); break;
  }
}

void fail(const std::string& what) { throw error(errc::errc_invalid_argument, "attention_decode_cuda: " + what); }

}  // namespace

int attention_decode_splits(int64_t n_seqs, int64_t n_kv_heads, int64_t max_kv_len, int n_sms) {
  // One full wave: the split kernel runs decode_blocks_per_sm blocks per SM
  // (<= 128 registers for groups up to 4). Rounding down keeps a few slots
  // idle; rounding up would start a second, nearly empty wave (measured on
  // an H100 at batch 8, 32K: 576 blocks on 528 slots ran at 0.71 of copy).
  const int64_t blocks = std::max<int64_t>(1, n_seqs * n_kv_heads);
  const int64_t slots = decode_blocks_per_sm * static_cast<int64_t>(std::max(1, n_sms));
  const int64_t want = std::max<int64_t>(1, slots / blocks);
  const int64_t cap = std::max<int64_t>(1, (max_kv_len + 127) / 128);
  return static_cast<int>(std::clamp<int64_t>(std::min(want, cap), 1, decode_max_splits));
}

size_t attention_decode_workspace_bytes(int64_t n_seqs, int64_t n_heads, int64_t head_dim, int max_splits) {
  if (n_seqs <= 0 || n_heads <= 0 || head_dim <= 0 || max_splits <= 0) return 0;
  return static_cast<size_t>(n_seqs * n_heads) * static_cast<size_t>(max_splits) *
         static_cast<size_t>(head_dim + 2) * sizeof(float);
}

void attention_decode_cuda(const attention_batch_cuda& b, const paged_kv& kv, int max_splits, void* workspace,
                           size_t workspace_bytes, cuda_stream s) {
  if (kv.type != dtype::dtype_bf16) fail("kv.type must be bf16");
  if (kv.head_dim != 64 && kv.head_dim != 128) fail("kv.head_dim must be 64 or 128");
  if (kv.n_kv_heads <= 0 || b.n_heads <= 0 || b.n_heads % kv.n_kv_heads != 0)
    fail("n_heads must be a positive multiple of kv.n_kv_heads");
  if (kv.page_size <= 0 || kv.page_size > (int64_t{1} << 30)) fail("kv.page_size must be positive");
  if (b.n_seqs < 0 || b.n_seqs > 65535) fail("n_seqs must be in [0, 65535]");
  if (max_splits < 1 || max_splits > decode_max_splits) fail("max_splits must be in [1, 256]");
  if (b.sliding_window < 0 || b.sliding_window > (int64_t{1} << 30)) fail("sliding_window out of range");
  if (b.n_seqs == 0) return;
  if (b.q == nullptr || b.out == nullptr || b.kv_lens == nullptr || b.block_table == nullptr || kv.base == nullptr)
    fail("q, out, kv_lens, block_table and kv.base must be non-null");
  if (b.block_table_stride <= 0) fail("block_table_stride must be positive");
  const size_t need = attention_decode_workspace_bytes(b.n_seqs, b.n_heads, kv.head_dim, max_splits);
  if (workspace == nullptr || workspace_bytes < need)
    fail("workspace must hold attention_decode_workspace_bytes() = " + std::to_string(need) + " bytes");
  const auto align = reinterpret_cast<uintptr_t>(kv.base) | kv.page_stride | kv.k_offset | kv.v_offset |
                     reinterpret_cast<uintptr_t>(b.q) | reinterpret_cast<uintptr_t>(workspace);
  if (align % 16 != 0) fail("kv.base, kv.page_stride, kv.k_offset, kv.v_offset, q and workspace must be 16-byte aligned");
  const int group = static_cast<int>(b.n_heads / kv.n_kv_heads);
  const int gt = group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : 8;
  const int group_chunks = (group + gt - 1) / gt;
  if (kv.n_kv_heads * group_chunks > 65535) fail("too many kv heads");
  decode_params p{};
  p.q = b.q;
  p.out = b.out;
  p.kv_lens = b.kv_lens;
  p.block_table = b.block_table;
  p.bt_stride = b.block_table_stride;
  p.kv_base = reinterpret_cast<const unsigned char*>(kv.base);
  p.page_stride = kv.page_stride;
  p.k_offset = kv.k_offset;
  p.v_offset = kv.v_offset;
  p.row_bytes = static_cast<size_t>(kv.n_kv_heads * kv.head_dim) * 2;
  p.page_size = static_cast<int>(kv.page_size);
  p.n_heads = static_cast<int>(b.n_heads);
  p.group = group;
  p.group_chunks = group_chunks;
  p.window = static_cast<int>(b.sliding_window);
  p.max_splits = max_splits;
  p.scale_log2 = b.scale * 1.4426950408889634f;
  p.ws_acc = static_cast<float*>(workspace);
  p.ws_ml = p.ws_acc + static_cast<size_t>(b.n_seqs * b.n_heads) * max_splits * kv.head_dim;
  const int n_kv = static_cast<int>(kv.n_kv_heads);
  const int n_seqs = static_cast<int>(b.n_seqs);
  if (kv.head_dim == 128)
    launch_decode_d<128>(p, gt, n_kv, n_seqs, s);
  else
    launch_decode_d<64>(p, gt, n_kv, n_seqs, s);
}

}  // namespace troupe
