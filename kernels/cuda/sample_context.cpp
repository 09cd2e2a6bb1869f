// sample_context: the host side of one batch of GPU sampling. Everything a
// step sends is packed into one pinned buffer and uploaded with one async
// copy (settings, history offsets, history entries); everything it returns
// comes back in one async copy, cut to what the batch asked for (tokens only,
// + chosen logprobs, + top-N). Histories are checked here (sorted, in range)
// because the kernels can only trust them. The state workspace is laid out
// per row, so it is zeroed only when it is (re)allocated or the vocab changes.
#include <algorithm>
#include <cstring>
#include <span>
#include <string>

#include <cuda_runtime.h>

#include "config/errors.hpp"
#include "kernels/cuda/check.cuh"
#include "kernels/device_buffer.hpp"
#include "kernels/sample.hpp"

namespace troupe {

namespace {

/// Pinned host memory, grown on demand (contents not kept).
struct pinned_buffer {
  void* p = nullptr;
  size_t bytes = 0;
  pinned_buffer() = default;
  pinned_buffer(const pinned_buffer&) = delete;
  pinned_buffer& operator=(const pinned_buffer&) = delete;
  ~pinned_buffer() {
    if (p != nullptr) cudaFreeHost(p);
  }
  void reserve(size_t n) {
    if (n <= bytes) return;
    if (p != nullptr) cudaFreeHost(p);
    p = nullptr;
    bytes = 0;
    n = std::max<size_t>(n + n / 2, 4096);
    TROUPE_CUDA_CHECK(cudaHostAlloc(&p, n, cudaHostAllocDefault));
    bytes = n;
  }
};

/// Grows a device buffer to at least n bytes (contents not kept); true when it was reallocated.
bool reserve(device_buffer& d, size_t n) {
  if (d.size() >= n) return false;
  d = device_buffer();  // free first: the new one may need the room
  d = device_buffer(std::max<size_t>(n + n / 2, 4096));
  return true;
}

size_t align16(size_t v) { return (v + 15) / 16 * 16; }

bool penalised(const sample_row_params& p) {
  return p.repetition_penalty != 1.0f || p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f;
}

}  // namespace

struct sample_context::impl {
  device_buffer in_dev, out_dev, ws, pen_rows;
  pinned_buffer in_host, out_host;
  int64_t ws_vocab = 0;
  size_t rows = 0;
  bool got_logprob = false, got_top = false;
};

sample_context::sample_context() : impl_(std::make_unique<impl>()) {}
sample_context::~sample_context() = default;

void sample_context::enqueue(const float* logits, int64_t vocab, const sample_row_host* row_ptr, size_t n_rows,
                             cuda_stream s) {
  impl& m = *impl_;
  m.rows = 0;
  const std::span<const sample_row_host> rows(row_ptr, n_rows);
  const auto batch = static_cast<int64_t>(rows.size());
  if (batch == 0) return;
  if (batch > sample_batch_max)
    throw error(errc::errc_invalid_argument, "sample_context: batch of " + std::to_string(batch) + " rows exceeds " +
                                                 std::to_string(sample_batch_max));
  if (vocab < 1 || vocab > sample_vocab_max)
    throw error(errc::errc_invalid_argument, "sample_context: vocab " + std::to_string(vocab) + " out of range");
  size_t entries = 0;
  int phases = 1;
  bool want_logprob = false, want_top = false;
  for (size_t r = 0; r < rows.size(); ++r) {
    const sample_row_host& row = rows[r];
    if (penalised(row.params)) {
      int32_t prev = -1;
      for (const sample_token_stat& e : std::span<const sample_token_stat>(row.history, row.history_size)) {
        if (e.token <= prev || e.token >= vocab || e.generated < 0)
          throw error(errc::errc_invalid_argument, "sample_context: row " + std::to_string(r) +
                                                       ": history must hold tokens in [0, vocab) in increasing order "
                                                       "with counts >= 0 (token " +
                                                       std::to_string(e.token) + " after " + std::to_string(prev) + ")");
        prev = e.token;
      }
      entries += row.history_size;
    }
    if (row.params.logprobs > sample_top_max)
      throw error(errc::errc_invalid_argument, "sample_context: row " + std::to_string(r) + ": logprobs must be at most " +
                                                   std::to_string(sample_top_max));
    phases = std::max(phases, sample_row_phases(row.params));
    want_logprob = want_logprob || row.params.logprobs >= 0;
    want_top = want_top || row.params.logprobs > 0;
  }
  const size_t b = static_cast<size_t>(batch);
  // Upload: params | offsets | entries (16-byte aligned pieces).
  const size_t off_params = 0, off_offsets = align16(b * sizeof(sample_row_params));
  const size_t off_entries = align16(off_offsets + (b + 1) * sizeof(int32_t));
  const size_t in_bytes = off_entries + entries * sizeof(sample_token_stat);
  m.in_host.reserve(in_bytes);
  reserve(m.in_dev, in_bytes);
  auto* base = static_cast<char*>(m.in_host.p);
  auto* params = reinterpret_cast<sample_row_params*>(base + off_params);
  auto* offsets = reinterpret_cast<int32_t*>(base + off_offsets);
  auto* ents = reinterpret_cast<sample_token_stat*>(base + off_entries);
  size_t at = 0;
  for (size_t r = 0; r < b; ++r) {
    params[r] = rows[r].params;
    offsets[r] = static_cast<int32_t>(at);
    if (penalised(rows[r].params) && rows[r].history_size > 0) {
      std::memcpy(ents + at, rows[r].history, rows[r].history_size * sizeof(sample_token_stat));
      at += rows[r].history_size;
    }
  }
  offsets[b] = static_cast<int32_t>(at);
  TROUPE_CUDA_CHECK(cudaMemcpyAsync(m.in_dev.data(), m.in_host.p, in_bytes, cudaMemcpyHostToDevice, s));
  // State workspace (zeroed when new or when the vocab changes the per-row layout) and penalty scratch.
  const size_t ws_bytes = sample_workspace_bytes(batch, vocab);
  if (reserve(m.ws, ws_bytes) || m.ws_vocab != vocab) {
    TROUPE_CUDA_CHECK(cudaMemsetAsync(m.ws.data(), 0, m.ws.size(), s));
    m.ws_vocab = vocab;
  }
  sample_history h;
  if (entries > 0) {
    reserve(m.pen_rows, b * static_cast<size_t>(vocab) * sizeof(float));
    h.offsets = reinterpret_cast<const int32_t*>(static_cast<char*>(m.in_dev.data()) + off_offsets);
    h.entries = reinterpret_cast<const sample_token_stat*>(static_cast<char*>(m.in_dev.data()) + off_entries);
    h.penalised = m.pen_rows.as<float>();
  }
  // Results: tokens | logprob | top ids | top logprobs.
  reserve(m.out_dev, b * sizeof(int32_t) * (2 + 2 * sample_top_max));
  m.out_host.reserve(b * sizeof(int32_t) * (2 + 2 * sample_top_max));
  sample_outputs o;
  o.tokens = m.out_dev.as<int32_t>();
  o.logprob = reinterpret_cast<float*>(o.tokens + b);
  o.top_ids = reinterpret_cast<int32_t*>(o.logprob + b);
  o.top_logprobs = reinterpret_cast<float*>(o.top_ids + b * sample_top_max);
  if (!want_top) o.top_ids = nullptr, o.top_logprobs = nullptr;
  if (!want_logprob) o.logprob = nullptr;
  sample_cuda(logits, batch, vocab, reinterpret_cast<sample_row_params*>(static_cast<char*>(m.in_dev.data()) + off_params),
              h, o, m.ws.data(), m.ws.size(), false, s, phases);
  const size_t back = b * sizeof(int32_t) * (want_top ? 2 + 2 * sample_top_max : want_logprob ? 2 : 1);
  TROUPE_CUDA_CHECK(cudaMemcpyAsync(m.out_host.p, m.out_dev.data(), back, cudaMemcpyDeviceToHost, s));
  m.rows = b;
  m.got_logprob = want_logprob;
  m.got_top = want_top;
}

sample_row_result sample_context::result(size_t i) const {
  const impl& m = *impl_;
  if (i >= m.rows)
    throw error(errc::errc_invalid_argument, "sample_context: result " + std::to_string(i) + " of " +
                                                 std::to_string(m.rows) + " rows");
  const auto* tokens = static_cast<const int32_t*>(m.out_host.p);
  const auto* logprob = reinterpret_cast<const float*>(tokens + m.rows);
  const auto* top_ids = reinterpret_cast<const int32_t*>(logprob + m.rows);
  const auto* top_lps = reinterpret_cast<const float*>(top_ids + m.rows * sample_top_max);
  sample_row_result r;
  r.token = tokens[i];
  r.logprob = m.got_logprob ? logprob[i] : 0.0f;
  if (m.got_top)
    for (int k = 0; k < sample_top_max; ++k) {
      const int32_t id = top_ids[i * sample_top_max + static_cast<size_t>(k)];
      if (id < 0) break;
      r.top_ids[k] = id;
      r.top_logprobs[k] = top_lps[i * sample_top_max + static_cast<size_t>(k)];
      r.n_top = k + 1;
    }
  return r;
}

}  // namespace troupe
