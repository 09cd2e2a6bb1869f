// Attention over a paged KV cache, for prefill chunks and decode alike: the
// queries of one sequence's chunk attend to every cached key before them and
// causally to the keys of the chunk itself (already appended to the pages),
// with grouped-query heads and an optional sliding window.
#pragma once

#include <cstddef>
#include <cstdint>

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

}  // namespace troupe
