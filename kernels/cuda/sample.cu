// CUDA sampling in three launches over (blocks of tiles) x rows; see
// kernels/sample.hpp for the why. Per launch, every block of a row works on
// its tiles and leaves partial results; the last block of the row to take a
// ticket (atomic counter, reset by that block) reduces them:
//   phase 1: copy + penalties (penalised rows), max / argmax / non -inf count,
//            raw log-sum-exp; greedy rows finish.
//   phase 2: Gumbel-max draw (no top-k / top-p), or bucket histograms (count,
//            fixed-point weight, per-tile exact weight sums) and the choice of
//            buckets to gather; the top-logprob histogram of the raw row.
//            Count cuts (top-k, top-N logprobs) are gathered here already:
//            each block pushes its tokens up to the bucket where its own
//            count reaches k; the row's cut bucket is never past any block's,
//            so the union holds every bucket up to the row's cut, and the
//            last block finishes such rows without phase 3.
//   phase 3: gather the chosen buckets into a per-row list (<= kCap), sum the
//            exact weight and draw the best token of the part above them;
//            the last block sorts, cuts exactly, draws, writes the outputs.
// The workspace holds one fixed-size block of state per row (counters and
// histograms stay zero between calls); penalised copies of rows go to the
// caller's scratch (sample_history::penalised).
#include <algorithm>
#include <atomic>
#include <string>

#include "config/errors.hpp"
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/sample_block.cuh"
#include "kernels/sample.hpp"

namespace troupe {

using namespace sample_detail;

namespace {

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

size_t align256(size_t v) { return (v + 255) / 256 * 256; }

/// Per-row block of the workspace (byte offsets inside it).
struct row_layout {
  size_t counters, state, p1, draws, tiles, hist_cnt, hist_w, lp_cnt, cand, lp_cand, bytes;
};

row_layout make_layout(int n_tiles) {
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
__device__ void write_outputs(const args& a, int r, const sample_row_params& p, const row_state& st, int token) {
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

// ---- phase 1: penalties and row statistics ----

__global__ void __launch_bounds__(kThreads) phase1_kernel(const args a) {
  __shared__ reduce_smem rs;
  __shared__ int range[2];
  const int r = static_cast<int>(blockIdx.y), tid = static_cast<int>(threadIdx.x);
  const sample_row_params p = a.params[r];
  const float* raw = a.logits + static_cast<size_t>(r) * a.vocab;
  int h0 = 0, h1 = 0;
  if (a.hist.offsets != nullptr) {
    h0 = a.hist.offsets[r];
    h1 = max(h0, a.hist.offsets[r + 1]);
  }
  const bool pen = h1 > h0 && penalised(p);
  const float* row = raw;
  if (pen) {
    float* w = a.hist.penalised + static_cast<size_t>(r) * a.vocab;
    for_tiles(raw, a, [&](int, float(&x)[4], int i0, int n) {
      for (int j = 0; j < n; ++j) w[i0 + j] = sanitize(x[j]);
    });
    const int e0 = static_cast<int>(blockIdx.x) * a.tpb * kTile, e1 = min(e0 + a.tpb * kTile, a.vocab);
    if (tid == 0) {  // this block's entries: tokens in [e0, e1) (lower bounds in the sorted list)
      int lo = h0, hi = h1;
      while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (a.hist.entries[mid].token < e0) lo = mid + 1;
        else hi = mid;
      }
      range[0] = lo;
      hi = h1;
      while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (a.hist.entries[mid].token < e1) lo = mid + 1;
        else hi = mid;
      }
      range[1] = lo;
    }
    __syncthreads();  // the copy is complete before it is patched
    for (int j = range[0] + tid; j < range[1]; j += kThreads) {
      const sample_token_stat e = a.hist.entries[j];
      if (e.token >= e0 && e.token < e1) w[e.token] = penalise(sanitize(raw[e.token]), e, p);
    }
    __syncthreads();  // patched before it is read
    row = w;
  }
  const bool want_lp = p.logprobs >= 0;
  float* proc_out = a.out.processed != nullptr ? a.out.processed + static_cast<size_t>(r) * a.vocab : nullptr;
  float mx = neg_inf(), rmx = neg_inf(), lm = neg_inf();
  int ax = 0x7fffffff, nf = 0, npi = 0;
  double ls = 0.0;
  auto lse = [&](float v) {  // raw log-sum-exp, online over the finite values
    rmx = fmaxf(rmx, v);
    if (v == pos_inf()) {
      ++npi;
    } else if (v != neg_inf()) {
      if (v > lm) {
        ls = ls * static_cast<double>(expf(__fsub_rn(lm, v))) + 1.0;
        lm = v;
      } else {
        ls += static_cast<double>(expf(__fsub_rn(v, lm)));
      }
    }
  };
  for_tiles(row, a, [&](int, float(&x)[4], int i0, int n) {
    for (int j = 0; j < n; ++j) {
      const float v = sanitize(x[j]);
      if (better(v, i0 + j, mx, ax)) {
        mx = v;
        ax = i0 + j;
      }
      nf += v != neg_inf();
      if (proc_out != nullptr) proc_out[i0 + j] = v;
      if (want_lp && !pen) lse(v);
    }
  });
  if (want_lp && pen)
    for_tiles(raw, a, [&](int, float(&x)[4], int, int n) {
      for (int j = 0; j < n; ++j) lse(sanitize(x[j]));
    });
  block_argmax(mx, ax, rs);
  nf = block_reduce(nf, op_sum<int>(), rs.i);
  p1_partial part{mx, ax, nf, 0, neg_inf(), neg_inf(), 0.0};
  if (want_lp) {
    part.raw_max = block_reduce(rmx, op_max_f(), rs.f);
    part.raw_posinf = block_reduce(npi, op_sum<int>(), rs.i);
    const float gm = block_reduce(lm, op_max_f(), rs.f);
    part.lse_m = gm;
    part.lse_s = block_reduce(lm == neg_inf() ? 0.0 : ls * exp(static_cast<double>(lm) - gm), op_sum<double>(), rs.d);
  }
  if (tid == 0) at<p1_partial>(a, r, a.lay.p1)[blockIdx.x] = part;
  if (!last_block(at<unsigned>(a, r, a.lay.counters) + kTicket1, a.blocks, rs, false)) return;

  // The row's last block: reduce the partials, decide what the row needs.
  const p1_partial* parts = at<p1_partial>(a, r, a.lay.p1);
  const bool have = tid < a.blocks;
  float v = have ? __ldcg(&parts[tid].max) : neg_inf();
  int vi = have ? __ldcg(&parts[tid].argmax) : 0x7fffffff;
  block_argmax(v, vi, rs);
  row_state st{};
  st.max = v;
  st.argmax = vi == 0x7fffffff ? 0 : vi;
  st.n_finite = block_reduce(have ? __ldcg(&parts[tid].n_finite) : 0, op_sum<int>(), rs.i);
  st.pen = pen;
  st.raw_max = neg_inf();
  if (want_lp) {
    st.raw_max = block_reduce(have ? __ldcg(&parts[tid].raw_max) : neg_inf(), op_max_f(), rs.f);
    st.raw_posinf = block_reduce(have ? __ldcg(&parts[tid].raw_posinf) : 0, op_sum<int>(), rs.i);
    const float pm = have ? __ldcg(&parts[tid].lse_m) : neg_inf();
    const float gm = block_reduce(pm, op_max_f(), rs.f);
    const double ps = pm == neg_inf() ? 0.0 : __ldcg(&parts[tid].lse_s) * exp(static_cast<double>(pm) - gm);
    st.raw_lse = block_reduce(ps, op_sum<double>(), rs.d);
  }
  const bool greedy = !(p.temperature >= kGreedyEps);
  st.n_top = want_lp && (a.out.top_ids != nullptr || a.out.top_logprobs != nullptr)
                 ? min(min(p.logprobs, sample_top_max), a.vocab)
                 : 0;
  st.lp_mode = st.n_top > 0;
  st.topk = p.top_k > 0 && p.top_k < st.n_finite;
  st.topp = p.top_p < 1.0f;
  st.token = greedy || st.max == neg_inf() ? st.argmax : -1;
  st.s_mode = st.token >= 0 ? 0 : (st.topk || st.topp) ? 2 : 1;
  st.done = st.token >= 0 && !st.lp_mode;
  if (tid == 0) *at<row_state>(a, r, a.lay.state) = st;
  if (st.done) write_outputs(a, r, p, st, st.token);
}

// ---- candidate lists, exact cuts, draws (last blocks of phases 2 and 3) ----

/// Appends key to a row's global candidate list (warp-aggregated atomics; keys past kList are counted, not stored).
__device__ __forceinline__ void push_global(unsigned* count, unsigned long long* list, unsigned long long key) {
  namespace cg = cooperative_groups;
  const cg::coalesced_group g = cg::coalesced_threads();
  unsigned base = 0;
  if (g.thread_rank() == 0) base = atomicAdd(count, static_cast<unsigned>(g.size()));
  base = g.shfl(base, 0);
  const unsigned pos = base + static_cast<unsigned>(g.thread_rank());
  if (pos < static_cast<unsigned>(kList)) list[pos] = key;
}

/// Copies the keys of a row's list (n <= kList) whose bucket against m is at
/// most bmax into cand (shared, kCap entries) and sorts them; returns how
/// many matched (the caller checks it against the histogram's count).
__device__ int load_filtered(unsigned long long* cand, reduce_smem& rs, const unsigned long long* list, unsigned n,
                             float m, int bmax) {
  __syncthreads();
  if (threadIdx.x == 0) rs.res[3] = 0;
  __syncthreads();
  const int lane = static_cast<int>(threadIdx.x & 31);
  for (int i0 = static_cast<int>(threadIdx.x) - lane; i0 < static_cast<int>(n); i0 += kThreads) {
    const int i = i0 + lane;  // the whole warp iterates together (for the ballot)
    const unsigned long long k = i < static_cast<int>(n) ? __ldcg(&list[i]) : 0ull;
    const bool keep = i < static_cast<int>(n) && bucket_of(key64_value(k), m) <= bmax;
    const unsigned mask = __ballot_sync(0xffffffffu, keep);
    int base = 0;
    if (lane == 0 && mask != 0) base = atomicAdd(&rs.res[3], __popc(mask));
    base = __shfl_sync(0xffffffffu, base, 0);
    const int pos = base + __popc(mask & ((1u << lane) - 1u));
    if (keep && pos < kCap) cand[pos] = k;
  }
  __syncthreads();
  const int g = rs.res[3];
  if (g <= kCap) sort_keys(cand, g);
  return g;
}

/// Writes a row's top-N logprobs from the sorted candidates.
__device__ void write_top(const args& a, int r, const row_state& st, const unsigned long long* cand) {
  const int t = static_cast<int>(threadIdx.x);
  if (t < sample_top_max) {
    const size_t o = static_cast<size_t>(r) * sample_top_max + t;
    const bool set = t < st.n_top;
    const unsigned long long k = set ? cand[t] : 0ull;
    if (a.out.top_ids != nullptr) a.out.top_ids[o] = set ? key64_id(k) : -1;
    if (a.out.top_logprobs != nullptr) a.out.top_logprobs[o] = set ? raw_logprob(key64_value(k), st) : neg_inf();
  }
}

/// Loads a row's gathered list (count known to be <= kCap) into cand and sorts it; returns its length.
__device__ int load_sorted(unsigned long long* cand, const unsigned long long* list, unsigned count) {
  const int g = static_cast<int>(min(count, static_cast<unsigned>(kCap)));
  for (int i = static_cast<int>(threadIdx.x); i < g; i += kThreads) cand[i] = __ldcg(&list[i]);
  sort_keys(cand, g);
  return g;
}

/// The exact cut on the sorted candidates cand[0, g) (shared) and the draw;
/// -1 when the plan's premises do not hold (the caller then takes the exact path).
__device__ int cut_and_draw(const unsigned long long* cand, reduce_smem& rs, const args& a, int r, int g,
                            const sample_row_params& p, const row_state& st, float inv_t, float min_p) {
  const int t = static_cast<int>(threadIdx.x);
  const float m = st.max;
  float x[2], w[2];
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int j = 2 * t + e;
    x[e] = j < g ? key64_value(cand[j]) : neg_inf();
    w[e] = j < g ? weight_of(x[e], m, inv_t) : 0.0f;
  }
  // top-k: the kept prefix ends before the first value below the k-th largest.
  int lk = g;
  if (st.topk) {
    const int idx = p.top_k - 1 - st.cnt_a;
    if (idx < 0 || idx >= g) return -1;
    const float kth = key64_value(cand[idx]);
    if (t == 0) rs.res[0] = g;
    __syncthreads();
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int j = 2 * t + e;
      if (j < g && x[e] < kth && (j == 0 || key64_value(cand[j - 1]) >= kth)) rs.res[0] = j;
    }
    __syncthreads();
    lk = rs.res[0];
    __syncthreads();
  }
  // top-p over the top-k set: the first prefix whose mass reaches top_p * total.
  int len = lk;
  if (st.topp) {
    const double q0 = 2 * t < lk ? w[0] : 0.0, q1 = 2 * t + 1 < lk ? w[1] : 0.0;
    const double total = st.topk ? block_reduce(q0 + q1, op_sum<double>(), rs.d) : st.total;
    double above = 0.0;  // exact weight of the buckets before the gathered ones
    if (st.cnt_a > 0) {
      const double* tiles = at<double>(a, r, a.lay.tiles);
      above = block_reduce(t < a.n_tiles ? __ldcg(&tiles[t]) : 0.0, op_sum<double>(), rs.d);
    }
    const double target = static_cast<double>(p.top_p) * total;
    if (above >= target) return -1;  // the cut lies above the gathered buckets
    const double ex = above + block_excl_scan(q0 + q1, rs.d);
    if (t == 0) rs.res[1] = -1;
    __syncthreads();
    if (ex < target && ex + q0 >= target) rs.res[1] = 2 * t + 1;
    else if (ex + q0 < target && ex + q0 + q1 >= target) rs.res[1] = 2 * t + 2;
    __syncthreads();
    const int lp = rs.res[1];
    __syncthreads();
    if (lp >= 0) len = lp;
    else if (st.topk) len = lk;  // rounding kept the mass short: the CPU keeps all
    else if (st.g_all) len = g;
    else return -1;
  }
  // Draw over the kept prefix (min-p per token) and the best of the part above.
  float best = neg_inf();
  int best_i = 0x7fffffff;
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int j = 2 * t + e;
    if (j >= len || !(w[e] > 0.0f) || w[e] < min_p) continue;
    const int id = key64_id(cand[j]);
    const float score = log_weight_of(x[e], m, inv_t) + gumbel_at(p.seed, p.step, id);
    if (better(score, id, best, best_i)) {
      best = score;
      best_i = id;
    }
  }
  if (st.cnt_a > 0 && t < a.blocks) {
    const draw_partial* parts = at<draw_partial>(a, r, a.lay.draws);
    const float s = __ldcg(&parts[t].score);
    const int id = __ldcg(&parts[t].id);
    if (better(s, id, best, best_i)) {
      best = s;
      best_i = id;
    }
  }
  block_argmax(best, best_i, rs);
  return best_i == 0x7fffffff ? -1 : best_i;
}

// ---- phase 2: draw, or histograms and the plan ----

struct p2_smem {
  uint32_t cnt[kBuckets];
  unsigned long long wfx[kBuckets];
  uint32_t lcnt[kBuckets];
  reduce_smem rs;
};

__global__ void __launch_bounds__(kThreads) phase2_kernel(const args a) {
  __shared__ p2_smem sm;
  const int r = static_cast<int>(blockIdx.y), tid = static_cast<int>(threadIdx.x);
  const row_state st = *at<row_state>(a, r, a.lay.state);
  const sample_row_params p = a.params[r];  // loaded alongside the state
  if (st.done) return;
  const float* raw = a.logits + static_cast<size_t>(r) * a.vocab;
  const float* row = processed_row(a, r, st.pen != 0);
  const bool draw = st.s_mode == 1, hist = st.s_mode == 2, lp = st.lp_mode != 0;
  // Top-k plans need counts only (a top-p cut inside the top-k set is exact
  // in the gathered list); top-p alone needs weights only (the gather checks
  // its own size) and the exact total.
  const bool counts = hist && st.topk, need_total = hist && !st.topk;
  const float m = st.max;
  const float inv_t = __fdiv_rn(1.0f, p.temperature);
  const float min_p = p.min_p > 0.0f ? p.min_p : 0.0f;
  for (int b = tid; b < kBuckets; b += kThreads) {
    sm.cnt[b] = 0;
    sm.wfx[b] = 0;
    sm.lcnt[b] = 0;
  }
  __syncthreads();
  float best = neg_inf();
  int best_i = 0x7fffffff;
  if (draw || hist)
    for_tiles(row, a, [&](int tile, float(&x)[4], int i0, int n) {
      double tw = 0.0;
      bool have_rnd = false;
      uint4 rnd = make_uint4(0, 0, 0, 0);
      for (int j = 0; j < n; ++j) {
        const float v = sanitize(x[j]);
        if (v == neg_inf()) continue;
        const float w = draw || need_total ? weight_of(v, m, inv_t) : 0.0f;
        if (draw) {
          if (!(w > 0.0f) || w < min_p) continue;
          if (!have_rnd) {
            rnd = philox_block(p.seed, p.step, i0 >> 2);
            have_rnd = true;
          }
          const float score = log_weight_of(v, m, inv_t) + gumbel(pick(rnd, j));
          if (better(score, i0 + j, best, best_i)) {
            best = score;
            best_i = i0 + j;
          }
        } else if (counts) {
          atomicAdd(&sm.cnt[bucket_of(v, m)], 1u);
        } else {
          const unsigned long long f = weight_fixed(w);
          if (f != 0) atomicAdd(&sm.wfx[bucket_of(v, m)], f);
          tw += w;
        }
      }
      if (need_total) {
        const double s = block_reduce(tw, op_sum<double>(), sm.rs.d);
        if (tid == 0) at<double>(a, r, a.lay.tiles)[tile] = s;
      }
    });
  if (lp)
    for_tiles(raw, a, [&](int, float(&x)[4], int, int n) {
      for (int j = 0; j < n; ++j) atomicAdd(&sm.lcnt[bucket_of(sanitize(x[j]), st.raw_max)], 1u);
    });
  if (draw) {
    block_argmax(best, best_i, sm.rs);
    if (tid == 0) at<draw_partial>(a, r, a.lay.draws)[blockIdx.x] = {best, best_i};
  }
  __syncthreads();
  unsigned* counters = at<unsigned>(a, r, a.lay.counters);
  unsigned long long* cand = at<unsigned long long>(a, r, a.lay.cand);
  unsigned long long* lp_cand = at<unsigned long long>(a, r, a.lay.lp_cand);
  // Count cuts: this block's tokens up to the bucket where its own count
  // reaches k. The row's cut bucket is at or before it, so counts past it
  // are not needed either: only bins <= bl are flushed.
  int bl = -1, bl_lp = -1;
  if (counts) {
    const uint32_t c0 = sm.cnt[2 * tid], c1 = sm.cnt[2 * tid + 1];
    const uint32_t cx = block_excl_scan(c0 + c1, reinterpret_cast<uint32_t*>(sm.rs.i));
    bl = min(first_reaching<uint32_t>(cx, cx + c0, cx + c0 + c1, static_cast<uint32_t>(p.top_k), sm.rs), kBuckets - 1);
    for_tiles(row, a, [&](int, float(&x)[4], int i0, int n) {
      for (int j = 0; j < n; ++j) {
        const float v = sanitize(x[j]);
        if (v != neg_inf() && bucket_of(v, m) <= bl) push_global(counters + kCandS, cand, key64(v, i0 + j));
      }
    });
  }
  if (lp) {
    const uint32_t c0 = sm.lcnt[2 * tid], c1 = sm.lcnt[2 * tid + 1];
    const uint32_t cx = block_excl_scan(c0 + c1, reinterpret_cast<uint32_t*>(sm.rs.i));
    bl_lp = min(first_reaching<uint32_t>(cx, cx + c0, cx + c0 + c1, static_cast<uint32_t>(st.n_top), sm.rs),
                kBuckets - 1);
    for_tiles(raw, a, [&](int, float(&x)[4], int i0, int n) {
      for (int j = 0; j < n; ++j) {
        const float v = sanitize(x[j]);
        if (bucket_of(v, st.raw_max) <= bl_lp) push_global(counters + kCandLp, lp_cand, key64(v, i0 + j));
      }
    });
  }
  unsigned* g_cnt = at<unsigned>(a, r, a.lay.hist_cnt);
  unsigned long long* g_w = at<unsigned long long>(a, r, a.lay.hist_w);
  unsigned* g_lcnt = at<unsigned>(a, r, a.lay.lp_cnt);
  for (int b = tid; b < kBuckets; b += kThreads) {
    if (b <= bl && sm.cnt[b] != 0) atomicAdd(&g_cnt[b], sm.cnt[b]);
    if (sm.wfx[b] != 0) atomicAdd(&g_w[b], sm.wfx[b]);
    if (b <= bl_lp && sm.lcnt[b] != 0) atomicAdd(&g_lcnt[b], sm.lcnt[b]);
  }
  if (!last_block(counters + kTicket2, a.blocks, sm.rs, hist || lp)) return;

  // The row's last block.
  row_state out = st;
  const int b0 = 2 * tid, b1 = b0 + 1;
  uint32_t g_count = 0;  // tokens in the sampling buckets to gather
  if (draw) {
    const draw_partial* parts = at<draw_partial>(a, r, a.lay.draws);
    float s = tid < a.blocks ? __ldcg(&parts[tid].score) : neg_inf();
    int i = tid < a.blocks ? __ldcg(&parts[tid].id) : 0x7fffffff;
    block_argmax(s, i, sm.rs);
    out.token = i == 0x7fffffff ? st.argmax : i;
  }
  if (hist) {
    double total = 0.0;
    if (need_total) {
      const double* tiles = at<double>(a, r, a.lay.tiles);
      total = block_reduce(tid < a.n_tiles ? __ldcg(&tiles[tid]) : 0.0, op_sum<double>(), sm.rs.d);
    }
    out.total = total;
    const uint32_t c0 = __ldcg(&g_cnt[b0]), c1 = __ldcg(&g_cnt[b1]);
    const unsigned long long w0 = __ldcg(&g_w[b0]), w1 = __ldcg(&g_w[b1]);
    g_cnt[b0] = g_cnt[b1] = 0;  // ready for the next call
    g_w[b0] = g_w[b1] = 0;
    const uint32_t cx = block_excl_scan(c0 + c1, reinterpret_cast<uint32_t*>(sm.rs.i));
    const unsigned long long wx = block_excl_scan(w0 + w1, sm.rs.u);
    sm.cnt[b0] = cx + c0;  // inclusive cumulative counts
    sm.cnt[b1] = cx + c0 + c1;
    __syncthreads();
    // Counts are exact up to the row's top-k cut bucket (the blocks flushed
    // no further): cc is read at or before it only.
    auto cc = [&](int b) -> uint32_t { return b < 0 ? 0u : sm.cnt[min(b, kBuckets - 1)]; };
    int lo = 0, hi = kBuckets - 1;
    bool fallback = false;
    if (st.topk) {
      const uint32_t k = static_cast<uint32_t>(p.top_k);
      const int bk = min(first_reaching<uint32_t>(cx, cx + c0, cx + c0 + c1, k, sm.rs), kBuckets - 1);
      if (cc(bk) <= kCap) {
        hi = bk;
      } else if (!st.topp && cc(bk) - cc(bk - 1) <= kCap) {
        lo = hi = bk;
      } else {
        fallback = true;
      }
    } else {
      // Fixed-point sums are within 2^19 units (of 2^-40) of the exact
      // per-bucket sums; the double sums within ~1e-9 relative: margins on
      // both sides of the target bracket the bucket where the cut falls.
      const double t_fx = static_cast<double>(p.top_p) * total * kFixedOne;
      const double margin = 1048576.0 + t_fx * 1e-9;
      const double lo_fx = t_fx - margin, hi_fx = t_fx + margin;
      const unsigned long long wa = wx + w0, wb = wx + w0 + w1;
      lo = lo_fx <= 0.0 ? 0 : first_reaching<unsigned long long>(wx, wa, wb, static_cast<unsigned long long>(lo_fx), sm.rs);
      hi = first_reaching<unsigned long long>(wx, wa, wb, static_cast<unsigned long long>(hi_fx) + 1ull, sm.rs);
      lo = min(lo, kBuckets - 1);
      hi = min(hi, kBuckets - 1);
    }
    out.s_fallback = fallback;
    out.g_lo = lo;
    out.g_hi = hi;
    if (st.topk) {
      out.cnt_a = static_cast<int>(cc(lo - 1));
      out.g_all = cc(hi) == static_cast<uint32_t>(st.n_finite);
      g_count = cc(hi) - cc(lo - 1);
    } else {  // phase 3 checks the gathered size itself; a cut past the buckets takes the exact path
      out.cnt_a = lo > 0;
      out.g_all = 0;
    }
    __syncthreads();
  }
  if (lp) {
    const uint32_t c0 = __ldcg(&g_lcnt[b0]), c1 = __ldcg(&g_lcnt[b1]);
    g_lcnt[b0] = g_lcnt[b1] = 0;
    const uint32_t cx = block_excl_scan(c0 + c1, reinterpret_cast<uint32_t*>(sm.rs.i));
    const int bn = min(first_reaching<uint32_t>(cx, cx + c0, cx + c0 + c1, static_cast<uint32_t>(st.n_top), sm.rs),
                       kBuckets - 1);
    sm.lcnt[b0] = cx + c0;
    sm.lcnt[b1] = cx + c0 + c1;
    __syncthreads();
    out.lp_hi = bn;
    out.lp_fallback = sm.lcnt[bn] > kCap;
  }
  // Rows whose cuts are counts finish here from the blocks' pushes (checked
  // against the histogram's count); the others go on to phase 3.
  auto* keys = reinterpret_cast<unsigned long long*>(sm.wfx);  // free now: kCap keys
  if (lp && !out.lp_fallback) {
    const unsigned n = __ldcg(counters + kCandLp);
    if (n <= static_cast<unsigned>(kList)) {
      const int g = load_filtered(keys, sm.rs, lp_cand, n, st.raw_max, out.lp_hi);
      if (g == static_cast<int>(sm.lcnt[out.lp_hi]) && g <= kCap) {
        write_top(a, r, out, keys);
        out.lp_done = 1;
      }
    }
  }
  if (hist && st.topk && !out.s_fallback && out.g_lo == 0) {
    const unsigned n = __ldcg(counters + kCandS);
    if (n <= static_cast<unsigned>(kList)) {
      const int g = load_filtered(keys, sm.rs, cand, n, m, out.g_hi);
      if (g == static_cast<int>(g_count) && g <= kCap) {
        const int tok = cut_and_draw(keys, sm.rs, a, r, g, p, out, inv_t, min_p);
        if (tok >= 0) {
          out.token = tok;
          out.s_mode = 0;
        }
      }
    }
  }
  if (tid == 0) {  // phase 3 gathers from empty lists
    counters[kCandS] = 0;
    counters[kCandLp] = 0;
  }
  out.done = out.token >= 0 && (!out.lp_mode || out.lp_done);
  if (tid == 0) *at<row_state>(a, r, a.lay.state) = out;
  if (out.done) write_outputs(a, r, p, out, out.token);
}

// ---- phase 3: gather, exact cuts, draw ----

__global__ void __launch_bounds__(kThreads) phase3_kernel(const args a) {
  __shared__ final_smem sm;
  const int r = static_cast<int>(blockIdx.y), tid = static_cast<int>(threadIdx.x);
  const row_state st = *at<row_state>(a, r, a.lay.state);
  const sample_row_params p = a.params[r];  // loaded alongside the state
  if (st.done) return;
  const float* raw = a.logits + static_cast<size_t>(r) * a.vocab;
  const float* row = processed_row(a, r, st.pen != 0);
  const bool gather = st.s_mode == 2 && !st.s_fallback;
  const bool lp = st.lp_mode != 0 && !st.lp_fallback && !st.lp_done;
  const bool sum_above = gather && st.cnt_a > 0 && st.topp;
  const float m = st.max;
  const float inv_t = __fdiv_rn(1.0f, p.temperature);
  const float min_p = p.min_p > 0.0f ? p.min_p : 0.0f;
  unsigned* counters = at<unsigned>(a, r, a.lay.counters);
  unsigned long long* cand = at<unsigned long long>(a, r, a.lay.cand);
  unsigned long long* lp_cand = at<unsigned long long>(a, r, a.lay.lp_cand);
  float best = neg_inf();
  int best_i = 0x7fffffff;
  if (gather)
    for_tiles(row, a, [&](int tile, float(&x)[4], int i0, int n) {
      double tw = 0.0;
      bool have_rnd = false;
      uint4 rnd = make_uint4(0, 0, 0, 0);
      for (int j = 0; j < n; ++j) {
        const float v = sanitize(x[j]);
        if (v == neg_inf()) continue;
        const int b = bucket_of(v, m);
        if (b < st.g_lo) {  // above the gathered buckets: inside every cut
          const float w = weight_of(v, m, inv_t);
          tw += w;
          if (!(w > 0.0f) || w < min_p) continue;
          if (!have_rnd) {
            rnd = philox_block(p.seed, p.step, i0 >> 2);
            have_rnd = true;
          }
          const float score = log_weight_of(v, m, inv_t) + gumbel(pick(rnd, j));
          if (better(score, i0 + j, best, best_i)) {
            best = score;
            best_i = i0 + j;
          }
        } else if (b <= st.g_hi) {
          push_global(counters + kCandS, cand, key64(v, i0 + j));
        }
      }
      if (sum_above) {
        const double s = block_reduce(tw, op_sum<double>(), sm.rs.d);
        if (tid == 0) at<double>(a, r, a.lay.tiles)[tile] = s;
      }
    });
  if (lp)
    for_tiles(raw, a, [&](int, float(&x)[4], int i0, int n) {
      for (int j = 0; j < n; ++j) {
        const float v = sanitize(x[j]);
        if (bucket_of(v, st.raw_max) <= st.lp_hi) push_global(counters + kCandLp, lp_cand, key64(v, i0 + j));
      }
    });
  if (gather && st.cnt_a > 0) {
    block_argmax(best, best_i, sm.rs);
    if (tid == 0) at<draw_partial>(a, r, a.lay.draws)[blockIdx.x] = {best, best_i};
  }
  if (!last_block(counters + kTicket3, a.blocks, sm.rs, true)) return;

  // The row's last block: top-N logprobs, then the token.
  if (st.lp_mode && !st.lp_done) {
    const unsigned n_lp = __ldcg(counters + kCandLp);
    if (lp && n_lp <= static_cast<unsigned>(kCap)) load_sorted(sm.cand, lp_cand, n_lp);
    else top_n_exact(sm, raw, a.vocab, st.n_top);
    write_top(a, r, st, sm.cand);
    __syncthreads();
  }
  int token = st.token;
  if (st.s_mode == 2) {
    const unsigned n_s = __ldcg(counters + kCandS);
    token = -1;
    if (gather && n_s <= static_cast<unsigned>(kCap)) {
      const int g = load_sorted(sm.cand, cand, n_s);
      token = cut_and_draw(sm.cand, sm.rs, a, r, g, p, st, inv_t, min_p);
    }
    if (token < 0)
      token = sample_exact(sm, row, a.vocab, m, inv_t, st.topk != 0, p.top_k, st.topp != 0, p.top_p, min_p, p.seed,
                           p.step);
  }
  if (token < 0 || token >= a.vocab) token = st.argmax;
  if (tid == 0) {
    counters[kCandS] = 0;
    counters[kCandLp] = 0;
  }
  write_outputs(a, r, p, st, token);
}

}  // namespace

int sample_row_phases(const sample_row_params& p) {
  const bool top_n = p.logprobs > 0;
  if (!(p.temperature >= kGreedyEps)) return top_n ? 3 : 1;
  return top_n || p.top_k > 0 || p.top_p < 1.0f ? 3 : 2;
}

size_t sample_workspace_bytes(int64_t batch, int64_t vocab) {
  if (batch <= 0 || vocab <= 0) return 0;
  const int n_tiles = static_cast<int>((std::min(vocab, sample_vocab_max) + kTile - 1) / kTile);
  return static_cast<size_t>(batch) * make_layout(n_tiles).bytes;
}

void sample_cuda(const float* logits, int64_t batch, int64_t vocab, sample_row_params* params,
                 const sample_history& history, const sample_outputs& out, void* workspace, size_t workspace_bytes,
                 bool advance_step, cuda_stream s, int phases) {
  if (batch < 0 || batch > sample_batch_max)
    throw error(errc::errc_invalid_argument, "sample_cuda: batch must be in [0, " + std::to_string(sample_batch_max) +
                                                 "], got " + std::to_string(batch));
  if (vocab < 1 || vocab > sample_vocab_max)
    throw error(errc::errc_invalid_argument,
                "sample_cuda: vocab must be in [1, " + std::to_string(sample_vocab_max) + "], got " + std::to_string(vocab));
  if (phases < 1 || phases > 3)
    throw error(errc::errc_invalid_argument, "sample_cuda: phases must be 1, 2 or 3, got " + std::to_string(phases));
  if (batch == 0) return;
  if (logits == nullptr) throw error(errc::errc_invalid_argument, "sample_cuda: logits is null");
  if ((reinterpret_cast<uintptr_t>(logits) & 3u) != 0)
    throw error(errc::errc_invalid_argument, "sample_cuda: logits must be 4-byte aligned");
  if (params == nullptr) throw error(errc::errc_invalid_argument, "sample_cuda: params is null");
  if (out.tokens == nullptr) throw error(errc::errc_invalid_argument, "sample_cuda: out.tokens is null");
  if ((history.offsets == nullptr) != (history.entries == nullptr) ||
      (history.offsets == nullptr) != (history.penalised == nullptr))
    throw error(errc::errc_invalid_argument,
                "sample_cuda: history offsets, entries and penalised must be given together");
  if ((reinterpret_cast<uintptr_t>(history.penalised) & 15u) != 0)
    throw error(errc::errc_invalid_argument, "sample_cuda: history.penalised must be 16-byte aligned");
  const size_t need = sample_workspace_bytes(batch, vocab);
  if (workspace == nullptr || workspace_bytes < need)
    throw error(errc::errc_invalid_argument, "sample_cuda: workspace must hold " + std::to_string(need) +
                                                 " bytes (sample_workspace_bytes), got " +
                                                 std::to_string(workspace == nullptr ? 0 : workspace_bytes));
  if ((reinterpret_cast<uintptr_t>(workspace) & 255u) != 0)
    throw error(errc::errc_invalid_argument, "sample_cuda: workspace must be 256-byte aligned");
  int device = 0, sms = 0;
  TROUPE_CUDA_CHECK(cudaGetDevice(&device));
  TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int n_tiles = static_cast<int>((vocab + kTile - 1) / kTile);
  // Enough blocks to cover the SMs about twice; more tiles per block when the batch alone does.
  const int64_t want_blocks = std::max<int64_t>(2 * static_cast<int64_t>(sms), 1);
  const int tpb = static_cast<int>(std::clamp<int64_t>(batch * n_tiles / want_blocks, 1, n_tiles));
  args a{};
  a.logits = logits;
  a.vocab = static_cast<int>(vocab);
  a.n_tiles = n_tiles;
  a.tpb = tpb;
  a.blocks = (n_tiles + tpb - 1) / tpb;
  a.vec = (reinterpret_cast<uintptr_t>(logits) & 15u) == 0 && vocab % 4 == 0;
  a.advance = advance_step;
  a.params = params;
  a.hist = history;
  a.out = out;
  a.ws = static_cast<char*>(workspace);
  a.lay = make_layout(n_tiles);
  a.row_bytes = a.lay.bytes;
  // One shared-memory carveout for the three kernels: no reconfiguration of
  // the SMs between the phases (set once per device).
  static std::atomic<uint64_t> carveout_set{0};
  const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
  if ((carveout_set.load(std::memory_order_relaxed) & bit) == 0) {
    for (const void* k : {reinterpret_cast<const void*>(phase1_kernel), reinterpret_cast<const void*>(phase2_kernel),
                          reinterpret_cast<const void*>(phase3_kernel)})
      TROUPE_CUDA_CHECK(
          cudaFuncSetAttribute(k, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
    carveout_set.fetch_or(bit, std::memory_order_relaxed);
  }
  const dim3 grid(static_cast<unsigned>(a.blocks), static_cast<unsigned>(batch));
  phase1_kernel<<<grid, kThreads, 0, s>>>(a);
  TROUPE_CUDA_LAUNCH_CHECK("sample phase1_kernel");
  if (phases >= 2) {
    phase2_kernel<<<grid, kThreads, 0, s>>>(a);
    TROUPE_CUDA_LAUNCH_CHECK("sample phase2_kernel");
  }
  if (phases >= 3) {
    phase3_kernel<<<grid, kThreads, 0, s>>>(a);
    TROUPE_CUDA_LAUNCH_CHECK("sample phase3_kernel");
  }
}


}  // namespace troupe
