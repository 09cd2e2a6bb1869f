// Logits processing and token sampling on the GPU for a whole batch:
// penalties -> greedy or temperature -> top-k -> top-p -> min-p -> draw, with
// the semantics of the CPU sampler (model/sampler.hpp, its twin), plus the
// logprobs the pipeline reports (log-softmax of the raw logits: the chosen
// token's and the top-N alternatives, ordered by raw logit, ties by lower id).
//
// Why it is built this way:
// - At batch 1 a row is the whole job, so a row is split over many blocks
//   (tiles of 4096 logits) in up to three launches; the last block of a row
//   to finish a launch (an atomic ticket, no grid barrier) reduces the row's
//   partial results. No host reads of per-step data: graph-capturable.
//     1. stats: max (first max), non -inf count, raw log-sum-exp; penalties
//        are applied here into a copy of the row. Greedy rows end here.
//     2. with the max known: plain temperature / min-p rows draw here; top-k /
//        top-p rows build bucket histograms over (max - logit) (counts for
//        top-k, fixed-point weights for top-p: integer atomics, so the sums
//        do not depend on timing); the last block picks the buckets that must
//        hold each cut. Count cuts (top-k, top-N logprobs) finish here: every
//        block also pushes its tokens up to the bucket where its own count
//        reaches k, a superset of the row's cut, checked against the counts.
//     3. the tokens of the chosen buckets are gathered (at most 2048 per row)
//        and sorted; the exact cuts are computed there in double as the CPU
//        does; the part of the row above the gathered buckets contributes its
//        exact weight sum and its best draw. When more tokens would be needed
//        (huge top-k with top-p, thousands of near-ties) the last block runs
//        an exact radix search over the row instead: slow, never wrong.
// - The filters never sort the vocabulary: every filter keeps a prefix of the
//   canonical order (logit descending, ties by lower id), and buckets are
//   monotone in the logit, so a bucket range is a contiguous piece of it.
// - Sums that decide membership are made per tile of 4096 logits in a fixed
//   order and added in tile order: a row's token does not depend on the batch
//   it is in or on how tiles are spread over blocks.
// - The draw is a Gumbel-max over the kept tokens with a counter-based RNG
//   (Philox4x32-10 keyed by the row's seed, counter (token / 4, step)): the
//   same (seed, step) gives the same token whatever else is in the batch, and
//   the split over blocks cannot change it. It is not the CPU's mt19937 stream.
// - Penalties need the request's history: per row a list of (token, times
//   generated, in prompt) sorted by token, so each block patches only the
//   tokens of its own tiles, without atomics or a vocab-sized mark table.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "kernels/cuda_stream.hpp"

namespace troupe {

/// Most top-logprob alternatives per row (OpenAI's limit); the stride of the top_* outputs.
inline constexpr int sample_top_max = 20;
/// Largest vocabulary sample_cuda accepts (token ids use 20 bits of its sort keys).
inline constexpr int64_t sample_vocab_max = int64_t{1} << 20;
/// Largest batch one sample_cuda call takes (rows are the grid's y dimension).
inline constexpr int64_t sample_batch_max = 65535;

/// One row's sampling settings as the kernels read them (device memory, one
/// per row). Values must pass sampling_params_validate (model/sampler.hpp).
struct sample_row_params {
  float temperature = 1.0f;         ///< < 1e-5 (sampling_greedy_eps) = greedy: argmax, ties -> lowest id
  int32_t top_k = 0;                ///< <= 0 = off; ties with the k-th logit are kept
  float top_p = 1.0f;               ///< (0, 1]; 1 = off
  float min_p = 0.0f;               ///< [0, 1]; 0 = off
  float repetition_penalty = 1.0f;  ///< prompt + generated tokens: logit > 0 ? logit / r : logit * r
  float frequency_penalty = 0.0f;   ///< generated tokens: logit -= f * count
  float presence_penalty = 0.0f;    ///< generated tokens: logit -= p
  int32_t logprobs = -1;            ///< -1: none; 0..20: the chosen token's logprob plus that many top ones
  uint64_t seed = 0;                ///< RNG key
  uint64_t step = 0;                ///< RNG counter: which draw of the request this is
};

/// One token of a request's history, as the penalties read it.
struct sample_token_stat {
  int32_t token = 0;      ///< in [0, vocab); strictly increasing within a row
  int32_t generated = 0;  ///< times generated (frequency and presence penalties); 0 = prompt only
  int32_t in_prompt = 0;  ///< non-zero when the prompt holds it (repetition penalty)
};

/// Penalty histories (device memory): row r's tokens are
/// entries[offsets[r] .. offsets[r + 1]). All null: no row is penalised.
/// Entries outside [0, vocab) are ignored; unsorted or repeated tokens are a
/// caller error (they are patched in an unspecified way, never out of bounds).
struct sample_history {
  const int32_t* offsets = nullptr;  ///< [batch + 1], non-decreasing
  const sample_token_stat* entries = nullptr;
  float* penalised = nullptr;        ///< [batch][vocab] scratch for the penalised rows (16-byte aligned)
};

/// Where sample_cuda writes (device memory). Only tokens is required.
struct sample_outputs {
  int32_t* tokens = nullptr;        ///< [batch] the chosen token (0 when every logit is -inf or NaN, as the CPU)
  float* logprob = nullptr;         ///< [batch] raw log-softmax of the chosen token; 0 where logprobs < 0
  int32_t* top_ids = nullptr;       ///< [batch][sample_top_max]; unused slots -1
  float* top_logprobs = nullptr;    ///< [batch][sample_top_max]; unused slots -inf
  float* processed = nullptr;       ///< [batch][vocab] optional: logits after NaN -> -inf and penalties (tests)
};

/// How many of the three launches a row needs (host side, from its settings):
/// 1 greedy without top logprobs, 2 plain temperature / min-p without top
/// logprobs, 3 otherwise. sample_cuda's `phases` is the maximum over a batch.
int sample_row_phases(const sample_row_params& p);

/// Bytes of workspace sample_cuda needs for this shape: one fixed-size block
/// per row (state, histograms, candidate lists), row r's at the same place for
/// any batch. The workspace must be zero-filled before its first use with a
/// vocab size; every call leaves it ready for the next (256-byte aligned).
size_t sample_workspace_bytes(int64_t batch, int64_t vocab);

/// Samples one token per row of fp32 logits [batch][vocab] on stream s (CUDA
/// builds only; all pointers device memory; logits 4-byte aligned). params[batch] is read, and
/// when advance_step each row's step is incremented after its draw. Runs the
/// first `phases` launches (1..3; sample_row_phases): a row needing more gets
/// no outputs. Throws error(errc_invalid_argument) naming the argument for a
/// bad shape, a missing pointer or a short workspace, error(errc_cuda) when a
/// launch fails.
void sample_cuda(const float* logits, int64_t batch, int64_t vocab, sample_row_params* params,
                 const sample_history& history, const sample_outputs& out, void* workspace, size_t workspace_bytes,
                 bool advance_step, cuda_stream s, int phases = 3);

/// One row of a batch as a host describes it to sample_context (host memory).
struct sample_row_host {
  sample_row_params params;
  const sample_token_stat* history = nullptr;  ///< sorted by token; history_size 0 = no penalties for this row
  size_t history_size = 0;
};

/// One row's result, read back to the host.
struct sample_row_result {
  int32_t token = 0;
  float logprob = 0.0f;  ///< raw log-softmax of token; 0 when logprobs < 0
  int32_t n_top = 0;     ///< entries used in top_ids / top_logprobs
  int32_t top_ids[sample_top_max] = {};
  float top_logprobs[sample_top_max] = {};
};

/// The host side of sampling for an engine: owns the device and pinned
/// buffers, packs a batch's settings and histories into one upload, launches
/// sample_cuda with only the phases the batch needs, and copies back the
/// tokens (and logprobs when asked) in one download. Buffers grow on demand
/// and are kept. Not thread-safe; one device.
class sample_context {
 public:
  sample_context();
  ~sample_context();
  sample_context(const sample_context&) = delete;
  sample_context& operator=(const sample_context&) = delete;

  /// Enqueues on s: the upload of the rows' settings, the sampling of logits
  /// [n_rows][vocab] (device memory) and the download of the results.
  /// The previous enqueue's stream must have been synchronized (its pinned
  /// buffers are reused). Throws troupe::error.
  void enqueue(const float* logits, int64_t vocab, const sample_row_host* rows, size_t n_rows, cuda_stream s);

  /// Row i of the last enqueue; valid once its stream has been synchronized.
  sample_row_result result(size_t i) const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace troupe
