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
// caller's scratch (sample_history::penalised). Phase 1 and the launches
// are here, phases 2 and 3 in sample_gather.cu, what they share in
// sample_rows.cuh.
#include <algorithm>
#include <atomic>
#include <string>

#include "config/errors.hpp"
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/sample_rows.cuh"
#include "kernels/sample.hpp"

namespace troupe {

using namespace sample_detail;

namespace sample_detail {

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

}  // namespace sample_detail


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
