// Attention over a paged KV cache, for prefill chunks and decode alike: the
// queries of one sequence's chunk attend to every cached key before them and
// causally to the keys of the chunk itself (already appended to the pages),
// with grouped-query heads and an optional sliding window.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/cuda_stream.hpp"
#include "kernels/dtype.hpp"

namespace troupe {

/// Where one layer's K and V rows of a paged cache live. Page p holds, for
/// this layer, page_size K rows at base + p * page_stride + k_offset and as
/// many V rows at base + p * page_stride + v_offset; a row is
/// [n_kv_heads][head_dim] elements of `type`.
struct paged_kv {
  dtype type = dtype::dtype_f32;
  const std::byte* base = nullptr;
  size_t page_stride = 0;
  size_t k_offset = 0;
  size_t v_offset = 0;
  int64_t page_size = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
};

/// One sequence's chunk of queries against its pages.
struct attention_args {
  const float* q = nullptr;        ///< [n_tokens][n_heads][head_dim]
  float* out = nullptr;            ///< [n_tokens][n_heads][head_dim]
  int64_t n_tokens = 0;
  int64_t n_heads = 0;             ///< multiple of kv.n_kv_heads (GQA)
  int64_t q_pos0 = 0;              ///< position of the chunk's first query
  const int32_t* page_table = nullptr;  ///< the sequence's pages, in order
  int64_t kv_len = 0;              ///< tokens cached, >= q_pos0 + n_tokens
  int64_t sliding_window = 0;      ///< 0 = full; else key k visible to query q iff q - k < window
  float scale = 1.0f;              ///< softmax scale, usually 1/sqrt(head_dim)
};

/// out = softmax(scale * q k^T + mask) v, per query head; fp32 math.
void attention_paged(const attention_args& a, const paged_kv& kv);

// ---- CUDA (kernels/cuda/attention_*.cu; CUDA builds only) ----

/// A ragged batch of sequences for the CUDA attention kernels: bf16 queries
/// and outputs, the same paged K/V layout as `paged_kv` (kv.base a device
/// pointer, kv.type bf16), fp32 math. Every pointer is a device pointer and
/// the kernels read no per-step data on the host, so a decode launch can be
/// captured in a CUDA graph and replayed after the arrays are rewritten.
struct attention_batch_cuda {
  const uint16_t* q = nullptr;            ///< bf16 [total_q][n_heads][head_dim]
  uint16_t* out = nullptr;                ///< bf16 [total_q][n_heads][head_dim]
  int64_t n_seqs = 0;                     ///< sequences in the batch
  int64_t n_heads = 0;                    ///< query heads, a multiple of kv.n_kv_heads (GQA)
  const int32_t* cu_seqlens_q = nullptr;  ///< prefill: [n_seqs + 1] first query row of each sequence (+ total)
  const int32_t* kv_lens = nullptr;       ///< [n_seqs] keys cached per sequence, the queries' own included
  const int32_t* q_pos0 = nullptr;        ///< prefill: [n_seqs] position of each chunk's first query
  const int32_t* block_table = nullptr;   ///< [n_seqs][block_table_stride] page ids of each sequence, in order
  int64_t block_table_stride = 0;         ///< entries per block-table row (>= pages of the longest sequence)
  int64_t sliding_window = 0;             ///< 0 = full; else key k visible to query q iff q - k < window
  float scale = 1.0f;                     ///< softmax scale, usually 1/sqrt(head_dim)
};

/// Prefill (or any chunk) attention on tensor cores: the q_len =
/// cu_seqlens_q[i+1] - cu_seqlens_q[i] queries of sequence i, at positions
/// q_pos0[i] + t, attend to the keys 0..q_pos0[i]+t of its pages (causal,
/// aligned bottom-right; requires q_pos0[i] + q_len <= kv_lens[i]). head_dim
/// 64 or 128. `max_q_len` (host value, >= every q_len) sizes the grid.
/// Throws error(errc_invalid_argument) naming a bad argument.
void attention_prefill_cuda(const attention_batch_cuda& b, const paged_kv& kv, int64_t max_q_len, cuda_stream s);

/// Which implementation attention_prefill_cuda runs.
enum class prefill_backend {
  prefill_backend_auto,   ///< cuDNN's fused attention where it loads and takes the shape, else the own kernel
  prefill_backend_cudnn,  ///< cuDNN only: throws error(errc_unsupported) saying why when it cannot run
  prefill_backend_own,    ///< troupe's mma.sync kernel (kernels/cuda/attention_prefill.cu)
};

/// attention_prefill_cuda with the implementation chosen. The one above is
/// prefill_backend_auto. cuDNN (libcudnn.so.9, >= 9.5) is loaded at run time;
/// its plans are built once per shape (batch size, heads, max_q_len rounded
/// up to a power of two, block-table width, page geometry, window on/off) and
/// keep per-shape device scratch, so concurrent calls of one shape on two
/// streams must not overlap.
void attention_prefill_cuda(const attention_batch_cuda& b, const paged_kv& kv, int64_t max_q_len, cuda_stream s,
                            prefill_backend which);

/// Diagnostics and benchmarks: pins the cuDNN graph variant (1: K/V read
/// from the pages, ragged Q/O; 2: K/V gathered contiguous first, ragged;
/// 3: K/V gathered, dense Q/O/K/V, one sequence only); 0 restores the default
/// order of trial. Process-wide.
void attention_prefill_cudnn_variant(int variant);

/// Whether cuDNN's fused attention can be loaded; `why` gets its version or the reason it cannot.
bool attention_prefill_cudnn_available(std::string* why = nullptr);

/// The path the calling thread's last attention_prefill_cuda took: "cudnn"
/// (K/V read from the pages), "cudnn-gathered" (K/V copied contiguous first),
/// "cudnn-dense" (gathered, one sequence, no ragged offsets) or "own"; `why` gets the reason cuDNN was not used, if it was not.
std::string attention_prefill_last_path(std::string* why = nullptr);

/// Split count for attention_decode_cuda: as many (sequence, kv head, split)
/// blocks as fit on `n_sms` multiprocessors at once (one wave), no split
/// shorter than 128 keys of `max_kv_len`; between 1 and 256.
int attention_decode_splits(int64_t n_seqs, int64_t n_kv_heads, int64_t max_kv_len, int n_sms);

/// Bytes of device workspace attention_decode_cuda needs for these sizes.
size_t attention_decode_workspace_bytes(int64_t n_seqs, int64_t n_heads, int64_t head_dim, int max_splits);

/// Decode attention (flash-decoding): one query per sequence (q row i, at
/// position kv_lens[i] - 1; cu_seqlens_q and q_pos0 are not read) against
/// its pages. Each sequence's visible keys are cut into at most `max_splits`
/// ranges; one block per (sequence, kv head, split) reads that range once for
/// all the query heads of the group and leaves fp32 partials (max, sum, acc)
/// in `workspace`; a second kernel combines them. The grid depends only on
/// n_seqs and max_splits (graph-capturable). A sequence with kv_lens[i] <= 0
/// gets zeros (padding slots of a graph bucket). head_dim 64 or 128.
void attention_decode_cuda(const attention_batch_cuda& b, const paged_kv& kv, int max_splits, void* workspace,
                           size_t workspace_bytes, cuda_stream s);

}  // namespace troupe
