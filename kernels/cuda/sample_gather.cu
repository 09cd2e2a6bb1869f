// Phases 2 and 3 of CUDA sampling (the plan: kernels/cuda/sample.cu): the
// draw or the histograms and the buckets to gather, then the gather, the
// exact cuts and the draw; with the candidate-list helpers of their last
// blocks.
#include "kernels/cuda/sample_rows.cuh"

namespace troupe {
namespace sample_detail {

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

}  // namespace sample_detail
}  // namespace troupe
