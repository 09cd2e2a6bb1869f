// Paged KV cache of one layer range. Memory is one allocation cut into
// fixed-size pages; each page holds page_size token slots of K and V for every
// layer of the range ([layer][k|v][slot][kv_head][head_dim]), so a sequence's
// pages are its whole KV. Sequences own page tables; pages return to a free
// list. gather/scatter move one sequence's KV to and from a contiguous
// buffer laid out independently of page size ([layer][k|v][token][kv_head]
// [head_dim]) — the unit of block-free KV transfer between instances.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "config/errors.hpp"
#include "kernels/attention.hpp"
#include "kernels/dtype.hpp"
#include "kernels/host_buffer.hpp"

namespace troupe {

/// Geometry of a paged KV cache.
struct kv_cache_config {
  int64_t n_layers = 0;     ///< layers of the range this cache serves
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t page_size = 16;   ///< token slots per page
  int64_t n_pages = 0;
  dtype type = dtype::dtype_f32;
  /// false: page allocator and page tables only, no host storage (a backend
  /// that keeps the pages elsewhere, e.g. on a GPU); row, layer_view, gather
  /// and scatter are then unavailable (scatter/gather return errc_unsupported).
  bool host_storage = true;
};

/// Pages needed for a budget of `bytes` with this geometry (n_pages ignored).
int64_t kv_cache_pages_for_bytes(const kv_cache_config& c, size_t bytes);

/// A paged KV cache: page allocator, per-sequence page tables, row access.
class kv_cache {
 public:
  /// Allocates n_pages pages (host memory unless c.host_storage is false); throws troupe::error(errc_invalid_argument) on a bad geometry.
  explicit kv_cache(const kv_cache_config& c);

  /// The geometry.
  const kv_cache_config& config() const { return cfg_; }

  /// Grows sequence `seq` (created if unknown) by n tokens, taking pages as
  /// needed. All or nothing: errc_kv_exhausted leaves the cache unchanged.
  errc append(int64_t seq, int64_t n);

  /// Shrinks `seq` to `len` tokens (<= its length), freeing pages past it.
  errc truncate(int64_t seq, int64_t len);

  /// Drops `seq` and returns its pages; unknown ids are ignored.
  void free(int64_t seq);

  /// True when `seq` is held.
  bool contains(int64_t seq) const { return seqs_.count(seq) != 0; }

  /// Tokens held for `seq` (0 when unknown).
  int64_t length(int64_t seq) const;

  /// The page table of `seq` (empty when unknown).
  std::span<const int32_t> pages(int64_t seq) const;

  /// Pages not held by any sequence.
  int64_t free_pages() const { return static_cast<int64_t>(free_.size()); }

  /// Pages a sequence of `tokens` tokens occupies.
  int64_t pages_for(int64_t tokens) const { return (tokens + cfg_.page_size - 1) / cfg_.page_size; }

  /// K (kind 0) or V (kind 1) row of `seq` at position pos in layer l:
  /// [n_kv_heads][head_dim] elements of the cache dtype. pos < length(seq).
  std::byte* row(int64_t seq, int64_t layer, int kind, int64_t pos);

  /// The pages of one layer as the attention kernel reads them.
  paged_kv layer_view(int64_t layer) const;

  /// Bytes of one sequence of n_tokens in the contiguous transfer layout.
  size_t transfer_bytes(int64_t n_tokens) const;

  /// Copies all of `seq`'s KV into dst (transfer_bytes(length) bytes).
  errc gather(int64_t seq, std::span<std::byte> dst) const;

  /// Creates `seq` (which must not be held) with n_tokens tokens read from src
  /// in the transfer layout. errc_kv_exhausted leaves the cache unchanged.
  errc scatter(int64_t seq, std::span<const std::byte> src, int64_t n_tokens);

  /// Bytes of one page (every layer's K and V blocks).
  size_t page_bytes() const { return block_bytes() * 2 * static_cast<size_t>(cfg_.n_layers); }
  /// Bytes of one layer's K (or V) block within a page.
  size_t block_bytes() const { return row_bytes() * static_cast<size_t>(cfg_.page_size); }
  /// Bytes of one token's K (or V) row.
  size_t row_bytes() const { return static_cast<size_t>(cfg_.n_kv_heads * cfg_.head_dim) * dtype_size(cfg_.type); }

 private:
  struct seq_state {
    int64_t length = 0;
    std::vector<int32_t> pages;
  };
  std::byte* block(int32_t page, int64_t layer, int kind) const;

  kv_cache_config cfg_;
  host_buffer storage_;
  std::vector<int32_t> free_;  // a stack: the most recently freed page is reused first
  std::unordered_map<int64_t, seq_state> seqs_;
};

}  // namespace troupe
