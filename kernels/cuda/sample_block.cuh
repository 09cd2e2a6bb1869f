// Device pieces of the GPU sampler (kernels/cuda/sample.cu): sort keys, the
// CPU's weight arithmetic, the bucket function, Philox + Gumbel noise,
// 1024-thread block reductions, and the exact single-block radix path that the
// last block of a row falls back to when the gathered candidates cannot hold
// a cut. Arithmetic that decides membership repeats the CPU's float operations
// (explicit _rn intrinsics, so nothing is contracted into an FMA).
#pragma once

#include <cstdint>

#include <cooperative_groups.h>
#include <cuda_runtime.h>

namespace troupe {
namespace sample_detail {

constexpr int kThreads = 1024;  // every sampling kernel; the block helpers assume it
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 4 * kThreads;  // logits per tile: one float4 per thread
constexpr int kBuckets = 2048;       // histogram bins (2 per thread)
constexpr int kCap = 2048;           // candidates sorted in shared memory (2 per thread)
constexpr int kIdBits = 20;
constexpr uint32_t kIdMax = (1u << kIdBits) - 1u;
constexpr int kKeyBits = 32 + kIdBits;
constexpr int kDigit = 11;
constexpr float kGreedyEps = 1e-5f;  // sampling_greedy_eps

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }
__device__ __forceinline__ float pos_inf() { return __int_as_float(0x7f800000); }
__device__ __forceinline__ float sanitize(float x) { return x != x ? neg_inf() : x; }

/// Order-preserving bits of a float (-0 counts as +0, as == does).
__device__ __forceinline__ uint32_t key32(float x) {
  const uint32_t b = __float_as_uint(x + 0.0f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key32_value(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}
/// (logit, id) key: descending order = logit descending, ties by lower id.
__device__ __forceinline__ unsigned long long key64(float x, int id) {
  return (static_cast<unsigned long long>(key32(x)) << kIdBits) | (kIdMax - static_cast<uint32_t>(id));
}
__device__ __forceinline__ int key64_id(unsigned long long k) { return static_cast<int>(kIdMax - (k & kIdMax)); }
__device__ __forceinline__ float key64_value(unsigned long long k) {
  return key32_value(static_cast<uint32_t>(k >> kIdBits));
}

/// The CPU's unnormalised probability: 1 for the max, else exp((x - max) / T) as exp((x - max) * (1 / T)).
__device__ __forceinline__ float weight_of(float x, float m, float inv_t) {
  return x == m ? 1.0f : expf(__fmul_rn(__fsub_rn(x, m), inv_t));
}
__device__ __forceinline__ float log_weight_of(float x, float m, float inv_t) {
  return x == m ? 0.0f : __fmul_rn(__fsub_rn(x, m), inv_t);
}
/// A weight as a 40-bit fixed-point integer: histogram sums by integer atomics
/// are exact and independent of the order the atomics land in.
__device__ __forceinline__ unsigned long long weight_fixed(float w) {
  return __float2ull_rn(__fmul_rn(w, 1099511627776.0f));  // 2^40
}
/// 2^40 as a double, to convert fixed-point sums back.
constexpr double kFixedOne = 1099511627776.0;

/// Histogram bucket of x against the row max m: 0 for the max, 48 buckets per
/// unit of (m - x) below 32, then 64 per octave (bit pattern of m - x), the
/// rest in the last. Only exact float operations and bit patterns: monotone
/// non-increasing in x, the same in every block.
__device__ __forceinline__ int bucket_of(float x, float m) {
  if (x == m) return 0;
  const float d = __fsub_rn(m, x);
  if (d < 32.0f) return min(static_cast<int>(__fmul_rn(d, 48.0f)), 1535);
  const uint32_t octaves = (__float_as_uint(d) - 0x42000000u) >> 17;  // 0x42000000 = 32.0f
  return static_cast<int>(min(1536u + octaves, static_cast<uint32_t>(kBuckets - 1)));
}

/// A threshold on keys of `bits` bits: keys whose top nb bits are >= pv's are kept (nb == 0: all).
struct thresh {
  unsigned long long pv = 0;
  int nb = 0;
  int bits = 32;
};
__device__ __forceinline__ bool passes(unsigned long long key, const thresh& t) {
  if (t.nb == 0) return true;
  const int s = t.bits - t.nb;
  return (key >> s) >= (t.pv >> s);
}

// ---- Philox4x32-10 and the Gumbel noise ----

__device__ __forceinline__ uint4 philox(uint4 c, uint2 k) {
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
    c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    k.x += 0x9E3779B9u;
    k.y += 0xBB67AE85u;
  }
  return c;
}

/// Four random words for tokens 4 * group .. 4 * group + 3 of draw `step`.
__device__ __forceinline__ uint4 philox_block(uint64_t seed, uint64_t step, int group) {
  return philox(make_uint4(static_cast<uint32_t>(group), 0u, static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32)),
                make_uint2(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)));
}

__device__ __forceinline__ uint32_t pick(const uint4& r, int lane) {
  return lane == 0 ? r.x : lane == 1 ? r.y : lane == 2 ? r.z : r.w;
}

/// Gumbel(0, 1) from 32 random bits: -log(-log(u)), u = (r + 0.5) / 2^32, with
/// -log(u) taken from whichever of u and 1 - u is small (no cancellation).
__device__ __forceinline__ float gumbel(uint32_t r) {
  const float e = r < 0x80000000u ? -logf((static_cast<float>(r) + 0.5f) * 2.3283064365386963e-10f)
                                  : -log1pf(-((static_cast<float>(~r) + 0.5f) * 2.3283064365386963e-10f));
  return -logf(e);
}

/// Noise for token i of a row (same for any batch composition and block split).
__device__ __forceinline__ float gumbel_at(uint64_t seed, uint64_t step, int i) {
  return gumbel(pick(philox_block(seed, step, i >> 2), i & 3));
}

/// (score, id) order of the draw: higher score, ties by lower id.
__device__ __forceinline__ bool better(float s, int i, float bs, int bi) { return s > bs || (s == bs && i < bi); }

// ---- block helpers (kThreads threads, all of which call them) ----

/// Reduction scratch every kernel keeps in shared memory.
struct reduce_smem {
  float f[kWarps];
  int i[kWarps];
  double d[kWarps];
  unsigned long long u[kWarps];
  int res[4];
};

template <class T>
struct op_sum {
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct op_max_f {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

/// Block-wide reduction; the tree is fixed, so the result is too.
template <class T, class Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  v = scratch[threadIdx.x & 31];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/// Exclusive prefix sum over threads in thread order (warp scans, then warp 0 scans the warp totals).
template <class T>
__device__ __forceinline__ T block_excl_scan(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  T inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const T n = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += n;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    T tot = scratch[lane];
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const T n = __shfl_up_sync(0xffffffffu, tot, o);
      if (lane >= o) tot += n;
    }
    scratch[lane] = tot;  // inclusive over warps
  }
  __syncthreads();
  const T pre = warp == 0 ? T(0) : scratch[warp - 1];
  return pre + inc - v;
}

/// (value, index) max with ties to the lower index, over the block; every thread gets the result.
__device__ __forceinline__ void block_argmax(float& v, int& i, reduce_smem& rs) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (better(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) {
    rs.f[threadIdx.x >> 5] = v;
    rs.i[threadIdx.x >> 5] = i;
  }
  __syncthreads();
  v = rs.f[threadIdx.x & 31];
  i = rs.i[threadIdx.x & 31];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (better(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
}

/// The first bucket whose inclusive cumulative value reaches target, given
/// this thread's buckets 2t and 2t+1 (inclusive values c0, c1; ex = the value
/// before bucket 2t); kBuckets when none does.
template <class T>
__device__ int first_reaching(T ex, T c0, T c1, T target, reduce_smem& rs) {
  __syncthreads();
  if (threadIdx.x == 0) rs.res[0] = kBuckets;
  __syncthreads();
  const int b = 2 * static_cast<int>(threadIdx.x);
  if (target <= ex) {
    if (b == 0) rs.res[0] = 0;  // reached before any bucket (target 0)
  } else if (c0 >= target) {
    rs.res[0] = b;
  } else if (c1 >= target) {
    rs.res[0] = b + 1;
  }
  __syncthreads();
  const int r = rs.res[0];
  __syncthreads();
  return r;
}

/// Calls f(x, i) for every element of row[0, n) (as stored), one block for
/// the whole row, with up to four 16-byte loads in flight per thread.
template <class F>
__device__ __forceinline__ void row_for_each(const float* row, int n, F&& f) {
  const int tid = static_cast<int>(threadIdx.x);
  int start = 0;
  if ((reinterpret_cast<uintptr_t>(row) & 15u) == 0) {
    const int n4 = n >> 2;
    const float4* r4 = reinterpret_cast<const float4*>(row);
    int j = tid;
    for (; j + 3 * kThreads < n4; j += 4 * kThreads) {
      float4 v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) v[u] = r4[j + u * kThreads];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int b = (j + u * kThreads) * 4;
        f(v[u].x, b);
        f(v[u].y, b + 1);
        f(v[u].z, b + 2);
        f(v[u].w, b + 3);
      }
    }
    for (; j < n4; j += kThreads) {
      const float4 v = r4[j];
      const int b = j * 4;
      f(v.x, b);
      f(v.y, b + 1);
      f(v.z, b + 2);
      f(v.w, b + 3);
    }
    start = n4 * 4;
  }
  for (int i = start + tid; i < n; i += kThreads) f(row[i], i);
}

// ---- the last block's candidate sort and the exact fallback ----

/// Shared memory of the last block of phase 3.
struct final_smem {
  uint32_t cnt[kBuckets];
  union {
    float f[kBuckets];
    double d[kBuckets];
  } w;
  unsigned long long cand[kCap];
  reduce_smem rs;
  int n_cand;
  double d_res[2];
};

/// Sorts cand[0, g) (shared memory, kCap entries) descending: bitonic over
/// the next power of two, padded with 0 keys (real keys are never 0). Up to
/// kThreads keys each thread holds one in a register and only exchanges
/// across warps go through shared memory; beyond, every exchange does.
__device__ inline void sort_keys(unsigned long long* cand, int g) {
  int p = 1;
  while (p < g) p <<= 1;
  const int t = static_cast<int>(threadIdx.x);
  if (p <= kThreads) {
    __syncthreads();  // cand[0, g) is written
    unsigned long long v = t < g ? cand[t] : 0ull;
    for (int k = 2; k <= p; k <<= 1) {
      for (int j = k >> 1; j > 0; j >>= 1) {
        unsigned long long o;
        if (j >= 32) {
          __syncthreads();
          cand[t] = v;
          __syncthreads();
          o = cand[t ^ j];
        } else {
          o = __shfl_xor_sync(0xffffffffu, v, j);
        }
        const bool keep_max = ((t & k) == 0) == (t < (t ^ j));
        v = keep_max ? (v > o ? v : o) : (v < o ? v : o);
      }
    }
    __syncthreads();
    if (t < g) cand[t] = v;
    __syncthreads();
    return;
  }
  for (int i = g + t; i < p; i += kThreads) cand[i] = 0ull;
  __syncthreads();
  for (int k = 2; k <= p; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int i = t; i < p; i += kThreads) {
        const int ixj = i ^ j;
        if (ixj > i) {
          const unsigned long long a = cand[i], b = cand[ixj];
          if ((i & k) == 0 ? a < b : a > b) {
            cand[i] = b;
            cand[ixj] = a;
          }
        }
      }
      __syncthreads();
    }
  }
}

/// Sorts sm.cand[0, g) descending.
__device__ inline void sort_candidates(final_smem& sm, int g) { sort_keys(sm.cand, g); }

/// Appends key to the shared candidate list (warp-aggregated atomics).
__device__ __forceinline__ void push_shared(final_smem& sm, unsigned long long key) {
  namespace cg = cooperative_groups;
  const cg::coalesced_group g = cg::coalesced_threads();
  int base = 0;
  if (g.thread_rank() == 0) base = atomicAdd(&sm.n_cand, static_cast<int>(g.size()));
  base = g.shfl(base, 0);
  const int pos = base + static_cast<int>(g.thread_rank());
  if (pos < kCap) sm.cand[pos] = key;
}

/// Exact radix search in descending key order: the threshold whose kept set is
/// the shortest prefix (restricted to keys passing `domain` on key32) whose
/// count (weighted = false) or weight reaches target; for weighted, target is a
/// fraction of the domain's total weight. bits = 32 searches logit values
/// only (ties at the cut kept), 52 (logit, id) keys. One block, whole row.
__device__ inline thresh radix_search(final_smem& sm, const float* row, int n, int bits, bool weighted, double target,
                                      float m, float inv_t, const thresh& domain) {
  thresh t;
  t.bits = bits;
  double above = 0.0;
  bool first = true;
  while (true) {
    const int w = t.nb < 32 ? min(kDigit, 32 - t.nb) : min(kDigit, bits - t.nb);
    const int shift = bits - t.nb - w;
    const unsigned long long digit_mask = (1ull << w) - 1ull;
    for (int i = static_cast<int>(threadIdx.x); i < kBuckets; i += kThreads) {
      sm.cnt[i] = 0;
      sm.w.d[i] = 0.0;
    }
    __syncthreads();
    double tot = 0.0;
    const thresh cur = t;
    row_for_each(row, n, [&](float x, int i) {
      x = sanitize(x);
      const uint32_t k32 = key32(x);
      if (!passes(k32, domain)) return;
      const unsigned long long key = bits == 32 ? static_cast<unsigned long long>(k32) : key64(x, i);
      if (cur.nb > 0 && (key >> (bits - cur.nb)) != (cur.pv >> (bits - cur.nb))) return;
      const int d = static_cast<int>((key >> shift) & digit_mask);
      atomicAdd(&sm.cnt[d], 1u);
      if (weighted) {
        const float wt = weight_of(x, m, inv_t);
        tot += wt;
        if (wt > 0.0f) atomicAdd(&sm.w.d[d], static_cast<double>(wt));
      }
    });
    if (weighted && first) target *= block_reduce(tot, op_sum<double>(), sm.rs.d);
    first = false;
    __syncthreads();
    // Thread tt owns bins kBuckets-1-2tt and kBuckets-2-2tt (descending key order).
    const int tt = static_cast<int>(threadIdx.x);
    const int b0 = kBuckets - 1 - 2 * tt, b1 = b0 - 1;
    const double q0 = weighted ? sm.w.d[b0] : static_cast<double>(sm.cnt[b0]);
    const double q1 = weighted ? sm.w.d[b1] : static_cast<double>(sm.cnt[b1]);
    const double ex = block_excl_scan(q0 + q1, sm.rs.d);
    if (threadIdx.x == 0) sm.rs.res[1] = -1;
    __syncthreads();
    if (above + ex < target && above + ex + q0 >= target) {
      sm.rs.res[1] = b0;
      sm.d_res[0] = above + ex;
    } else if (above + ex + q0 < target && above + ex + q0 + q1 >= target) {
      sm.rs.res[1] = b1;
      sm.d_res[0] = above + ex + q0;
    }
    __syncthreads();
    const int d = sm.rs.res[1];
    if (d < 0) {  // rounding left the target unreached: keep the whole domain (the CPU keeps all)
      __syncthreads();
      return thresh{};
    }
    above = sm.d_res[0];
    const uint32_t in_bin = sm.cnt[d];
    __syncthreads();
    t.pv |= static_cast<unsigned long long>(d) << shift;
    t.nb += w;
    if (in_bin <= 1 || t.nb >= bits) return t;
  }
}

/// Draw by Gumbel-max over the whole row, keeping tokens that pass the thresholds and min-p.
__device__ inline int draw_pass(final_smem& sm, const float* row, int n, float m, float inv_t, const thresh& tk,
                                const thresh& tp, float min_p, uint64_t seed, uint64_t step) {
  float best = neg_inf();
  int best_i = 0x7fffffff;
  int group = -1;
  uint4 rnd = make_uint4(0, 0, 0, 0);
  row_for_each(row, n, [&](float x, int i) {
    x = sanitize(x);
    const float w = weight_of(x, m, inv_t);
    if (!(w > 0.0f) || w < min_p) return;
    if (!passes(key32(x), tk) || !passes(key64(x, i), tp)) return;
    if ((i >> 2) != group) {
      group = i >> 2;
      rnd = philox_block(seed, step, group);
    }
    const float score = log_weight_of(x, m, inv_t) + gumbel(pick(rnd, i & 3));
    if (better(score, i, best, best_i)) {
      best = score;
      best_i = i;
    }
  });
  block_argmax(best, best_i, sm.rs);
  return best_i;
}

/// The exact sampling path over a whole (processed) row: radix searches for
/// the top-k and top-p thresholds, then a draw pass.
__device__ inline int sample_exact(final_smem& sm, const float* row, int n, float m, float inv_t, bool topk, int k,
                                   bool topp, float top_p, float min_p, uint64_t seed, uint64_t step) {
  thresh tk, tp;
  if (topk) tk = radix_search(sm, row, n, 32, false, static_cast<double>(k), m, inv_t, thresh{});
  if (topp) tp = radix_search(sm, row, n, kKeyBits, true, static_cast<double>(top_p), m, inv_t, tk);
  return draw_pass(sm, row, n, m, inv_t, tk, tp, min_p, seed, step);
}

/// The exact top-n (logit desc, id asc) of a raw row into sm.cand[0, n_top), sorted.
__device__ inline void top_n_exact(final_smem& sm, const float* row, int n, int n_top) {
  const thresh t = radix_search(sm, row, n, kKeyBits, false, static_cast<double>(n_top), 0.0f, 1.0f, thresh{});
  if (threadIdx.x == 0) sm.n_cand = 0;
  __syncthreads();
  row_for_each(row, n, [&](float x, int i) {
    const unsigned long long k = key64(sanitize(x), i);
    if (passes(k, t)) push_shared(sm, k);
  });
  __syncthreads();
  sort_candidates(sm, min(sm.n_cand, kCap));
}

}  // namespace sample_detail
}  // namespace troupe
