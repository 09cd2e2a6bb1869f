// What the three sampling kernels share (kernels/cuda/sample.cu has the
// phases and their order): the per-row workspace layout, the state a row's
// last block hands to the next phase, the kernels' arguments, and the device
// helpers of more than one phase. Included by sample.cu (phase 1, launches)
// and sample_gather.cu (phases 2 and 3).
#pragma once

#include <cstddef>

#include "kernels/cuda/sample_block.cuh"
#include "kernels/sample.hpp"

namespace troupe {
namespace sample_detail {


static_assert(sizeof(sample_row_params) == 48, "sample_row_params layout is shared with the host");
static_assert(sizeof(sample_token_stat) == 12, "sample_token_stat layout is shared with the host");

// The last block loads one partial per tile or block with one thread each.
static_assert(sample_vocab_max / kTile <= kThreads, "tiles per row must fit one block");

// Counters per row: phase tickets 1..3, then the two candidate-list lengths.
enum { kTicket1, kTicket2, kTicket3, kCandS, kCandLp, kCounters = 8 };
// Capacity of a row's candidate lists: phase 2's per-block pushes for a count
// cut of k hold about k per block, so k up to ~100 at 32 blocks a row.
constexpr int kList = 2 * kCap;

/// What a row's last blocks hand to the next phase.
struct row_state {
  float max;        // processed row: max (NaN -> -inf), first argmax, non -inf count
  int argmax;
  int n_finite;
  float raw_max;    // raw row: max, +inf count, sum of exp(x - max finite)
  int raw_posinf;
  int pen;          // the row's processed values live in the work copy
  double raw_lse;
  int done;         // outputs written
  int token;        // chosen token (-1 until known)
  int s_mode;       // 0 token known, 1 draw in phase 2, 2 histogram + gather
  int topk, topp;   // active filters
  int lp_mode;      // 1: top-N logprobs to gather
  int lp_done;      // top-N outputs written (phase 2)
  int n_top;
  int s_fallback, lp_fallback;  // exact single-block paths in phase 3
  int g_lo, g_hi;   // sampling buckets gathered; buckets < g_lo are summarised
  int cnt_a;        // top-k: tokens in buckets < g_lo; top-p alone: 1 when g_lo > 0
  int g_all;        // the gathered buckets reach the last non -inf token (top-k plans)
  int lp_hi;        // top-N buckets gathered: [0, lp_hi]
  double total;     // exact weight of the row (top-p without top-k)
};

struct p1_partial {
  float max;
  int argmax;
  int n_finite;
  int raw_posinf;
  float raw_max;
  float lse_m;
  double lse_s;
};

struct draw_partial {
  float score;
  int id;
};

inline size_t align256(size_t v) { return (v + 255) / 256 * 256; }

/// Per-row block of the workspace (byte offsets inside it).
struct row_layout {
  size_t counters, state, p1, draws, tiles, hist_cnt, hist_w, lp_cnt, cand, lp_cand, bytes;
};

inline row_layout make_layout(int n_tiles) {
  row_layout l{};
  size_t o = 0;
  auto take = [&](size_t n) {
    const size_t at = o;
    o += align256(n);
    return at;
  };
  l.counters = take(kCounters * sizeof(unsigned));
  l.state = take(sizeof(row_state));
  l.p1 = take(static_cast<size_t>(n_tiles) * sizeof(p1_partial));
  l.draws = take(static_cast<size_t>(n_tiles) * sizeof(draw_partial));
  l.tiles = take(static_cast<size_t>(n_tiles) * sizeof(double));
  l.hist_cnt = take(kBuckets * sizeof(unsigned));
  l.hist_w = take(kBuckets * sizeof(unsigned long long));
  l.lp_cnt = take(kBuckets * sizeof(unsigned));
  l.cand = take(kList * sizeof(unsigned long long));
  l.lp_cand = take(kList * sizeof(unsigned long long));
  l.bytes = o;
  return l;
}

/// Everything a phase kernel reads: passed by value.
struct args {
  const float* logits;
  int vocab, n_tiles, tpb, blocks;  // tiles per block, blocks per row
  bool vec;                         // every row 16-byte aligned: float4 loads
  bool advance;
  sample_row_params* params;
  sample_history hist;
  sample_outputs out;
  char* ws;  // row r's block at ws + r * row_bytes
  size_t row_bytes;
  row_layout lay;
};

template <class T>
__device__ __forceinline__ T* at(const args& a, int r, size_t off) {
  return reinterpret_cast<T*>(a.ws + static_cast<size_t>(r) * a.row_bytes + off);
}

__device__ __forceinline__ bool penalised(const sample_row_params& p) {
  return p.repetition_penalty != 1.0f || p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f;
}

/// The CPU's penalties on one token (sampler::apply_penalties_).
__device__ __forceinline__ float penalise(float x, const sample_token_stat& e, const sample_row_params& p) {
  const float r = p.repetition_penalty;
  if (r != 1.0f && (e.in_prompt != 0 || e.generated > 0)) x = x > 0.0f ? __fdiv_rn(x, r) : __fmul_rn(x, r);
  if (e.generated > 0)
    x = __fsub_rn(x, __fadd_rn(__fmul_rn(p.frequency_penalty, static_cast<float>(e.generated)), p.presence_penalty));
  return x;
}

/// Calls f(tile, x[4], i0, n) for each tile of this block: thread t holds
/// logits i0 = tile * kTile + 4t .. i0 + 3, the first n of them inside the
/// row (n may be <= 0). The mapping never depends on the block split.
template <class F>
__device__ __forceinline__ void for_tiles(const float* row, const args& a, F&& f) {
  const int t0 = static_cast<int>(blockIdx.x) * a.tpb, t1 = min(t0 + a.tpb, a.n_tiles);
  for (int tile = t0; tile < t1; ++tile) {
    const int i0 = tile * kTile + 4 * static_cast<int>(threadIdx.x);
    const int n = min(4, a.vocab - i0);
    float x[4];
    if (a.vec && n == 4) {
      const float4 q = *reinterpret_cast<const float4*>(row + i0);
      x[0] = q.x;
      x[1] = q.y;
      x[2] = q.z;
      x[3] = q.w;
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) x[j] = j < n ? row[i0 + j] : neg_inf();
    }
    f(tile, x, i0, n);
  }
}

/// Takes this block's ticket for the row; true in the row's last block, which
/// then sees every other block's partial results and resets the ticket.
/// all_wrote: every thread wrote results other blocks read (else thread 0 only).
__device__ __forceinline__ bool last_block(unsigned* ticket, int blocks, reduce_smem& rs, bool all_wrote) {
  if (all_wrote || threadIdx.x == 0) __threadfence();  // this thread's results are visible device-wide
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned t = atomicAdd(ticket, 1u);
    rs.res[2] = t == static_cast<unsigned>(blocks - 1);
    if (rs.res[2]) *ticket = 0u;  // every block has taken its ticket
  }
  __syncthreads();
  const bool last = rs.res[2] != 0;
  if (last) __threadfence();
  return last;
}

/// The pipeline's logprob of a raw logit (sampler::log_softmax).
__device__ __forceinline__ float raw_logprob(float x, const row_state& st) {
  if (st.raw_max == pos_inf()) return x == st.raw_max ? static_cast<float>(-log(static_cast<double>(st.raw_posinf))) : neg_inf();
  if (st.raw_max == neg_inf()) return neg_inf();
  return static_cast<float>(static_cast<double>(x) - st.raw_max - log(st.raw_lse));
}

/// Writes the row's token (and its logprob), empty top slots when no top-N is
/// wanted, and advances the RNG step. Called by a row's last block once.
__device__ inline void write_outputs(const args& a, int r, const sample_row_params& p, const row_state& st, int token) {
  const int t = static_cast<int>(threadIdx.x);
  if (st.n_top == 0 && t < sample_top_max) {
    const size_t o = static_cast<size_t>(r) * sample_top_max + t;
    if (a.out.top_ids != nullptr) a.out.top_ids[o] = -1;
    if (a.out.top_logprobs != nullptr) a.out.top_logprobs[o] = neg_inf();
  }
  if (t == 0) {
    a.out.tokens[r] = token;
    if (a.out.logprob != nullptr) {
      const float x = sanitize(a.logits[static_cast<size_t>(r) * a.vocab + token]);
      a.out.logprob[r] = p.logprobs >= 0 ? raw_logprob(x, st) : 0.0f;
    }
    if (a.advance) a.params[r].step = p.step + 1;
  }
}

__device__ __forceinline__ const float* processed_row(const args& a, int r, bool pen) {
  return (pen ? a.hist.penalised : a.logits) + static_cast<size_t>(r) * a.vocab;
}

// The phases, launched in this order over (blocks of tiles) x rows.
__global__ void __launch_bounds__(kThreads) phase1_kernel(const args a);
__global__ void __launch_bounds__(kThreads) phase2_kernel(const args a);
__global__ void __launch_bounds__(kThreads) phase3_kernel(const args a);

}  // namespace sample_detail
}  // namespace troupe
