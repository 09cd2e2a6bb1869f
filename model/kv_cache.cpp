#include "model/kv_cache.hpp"

#include <algorithm>
#include <cstring>
#include <string>

namespace troupe {

int64_t kv_cache_pages_for_bytes(const kv_cache_config& c, size_t bytes) {
  const size_t page = static_cast<size_t>(c.n_kv_heads * c.head_dim * c.page_size * 2 * c.n_layers) * dtype_size(c.type);
  return page == 0 ? 0 : static_cast<int64_t>(bytes / page);
}

kv_cache::kv_cache(const kv_cache_config& c) : cfg_(c) {
  if (c.n_layers <= 0 || c.n_kv_heads <= 0 || c.head_dim <= 0 || c.page_size <= 0 || c.n_pages <= 0 ||
      c.n_pages > (int64_t{1} << 30))
    throw error(errc::errc_invalid_argument,
                "kv_cache: every dimension must be positive (layers " + std::to_string(c.n_layers) + ", kv heads " +
                    std::to_string(c.n_kv_heads) + ", head_dim " + std::to_string(c.head_dim) + ", page_size " +
                    std::to_string(c.page_size) + ", pages " + std::to_string(c.n_pages) + ")");
  if (c.host_storage) storage_ = host_buffer(page_bytes() * static_cast<size_t>(c.n_pages));
  free_.resize(static_cast<size_t>(c.n_pages));
  for (int64_t i = 0; i < c.n_pages; ++i) free_[static_cast<size_t>(i)] = static_cast<int32_t>(c.n_pages - 1 - i);
}

std::byte* kv_cache::block(int32_t page, int64_t layer, int kind) const {
  return storage_.data() + static_cast<size_t>(page) * page_bytes() +
         static_cast<size_t>(layer * 2 + kind) * block_bytes();
}

errc kv_cache::append(int64_t seq, int64_t n) {
  if (n < 0) return errc::errc_invalid_argument;
  auto it = seqs_.find(seq);
  const int64_t len = it == seqs_.end() ? 0 : it->second.length;
  const int64_t have = it == seqs_.end() ? 0 : static_cast<int64_t>(it->second.pages.size());
  const int64_t need = pages_for(len + n) - have;
  if (need > free_pages()) return errc::errc_kv_exhausted;
  seq_state& s = it == seqs_.end() ? seqs_[seq] : it->second;
  for (int64_t i = 0; i < need; ++i) {
    s.pages.push_back(free_.back());
    free_.pop_back();
  }
  s.length = len + n;
  return errc::ok;
}

errc kv_cache::truncate(int64_t seq, int64_t len) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return errc::errc_unknown_sequence;
  if (len < 0 || len > it->second.length) return errc::errc_invalid_argument;
  seq_state& s = it->second;
  while (static_cast<int64_t>(s.pages.size()) > pages_for(len)) {
    free_.push_back(s.pages.back());
    s.pages.pop_back();
  }
  s.length = len;
  return errc::ok;
}

void kv_cache::free(int64_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  for (auto p = it->second.pages.rbegin(); p != it->second.pages.rend(); ++p) free_.push_back(*p);
  seqs_.erase(it);
}

int64_t kv_cache::length(int64_t seq) const {
  auto it = seqs_.find(seq);
  return it == seqs_.end() ? 0 : it->second.length;
}

std::span<const int32_t> kv_cache::pages(int64_t seq) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return {};
  return it->second.pages;
}

std::byte* kv_cache::row(int64_t seq, int64_t layer, int kind, int64_t pos) {
  const seq_state& s = seqs_.at(seq);
  return block(s.pages[static_cast<size_t>(pos / cfg_.page_size)], layer, kind) +
         static_cast<size_t>(pos % cfg_.page_size) * row_bytes();
}

paged_kv kv_cache::layer_view(int64_t layer) const {
  paged_kv v;
  v.type = cfg_.type;
  v.base = storage_.data();
  v.page_stride = page_bytes();
  v.k_offset = static_cast<size_t>(layer * 2) * block_bytes();
  v.v_offset = static_cast<size_t>(layer * 2 + 1) * block_bytes();
  v.page_size = cfg_.page_size;
  v.n_kv_heads = cfg_.n_kv_heads;
  v.head_dim = cfg_.head_dim;
  return v;
}

size_t kv_cache::transfer_bytes(int64_t n_tokens) const {
  return row_bytes() * static_cast<size_t>(n_tokens) * 2 * static_cast<size_t>(cfg_.n_layers);
}

// Both copies walk the sequence page by page: each (layer, kind) run inside a
// page is one memcpy of up to page_size rows.
errc kv_cache::gather(int64_t seq, std::span<std::byte> dst) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return errc::errc_unknown_sequence;
  if (!cfg_.host_storage) return errc::errc_unsupported;
  const seq_state& s = it->second;
  if (dst.size() < transfer_bytes(s.length)) return errc::errc_invalid_argument;
  const size_t rb = row_bytes();
  for (int64_t l = 0; l < cfg_.n_layers; ++l)
    for (int kind = 0; kind < 2; ++kind) {
      std::byte* out = dst.data() + static_cast<size_t>(l * 2 + kind) * rb * static_cast<size_t>(s.length);
      for (int64_t p = 0; p * cfg_.page_size < s.length; ++p) {
        const int64_t n = std::min(cfg_.page_size, s.length - p * cfg_.page_size);
        std::memcpy(out + static_cast<size_t>(p * cfg_.page_size) * rb, block(s.pages[static_cast<size_t>(p)], l, kind),
                    static_cast<size_t>(n) * rb);
      }
    }
  return errc::ok;
}

errc kv_cache::scatter(int64_t seq, std::span<const std::byte> src, int64_t n_tokens) {
  if (!cfg_.host_storage) return errc::errc_unsupported;
  if (contains(seq)) return errc::errc_invalid_argument;
  if (n_tokens < 0 || src.size() < transfer_bytes(n_tokens)) return errc::errc_invalid_argument;
  if (errc e = append(seq, n_tokens); e != errc::ok) {
    seqs_.erase(seq);
    return e;
  }
  const seq_state& s = seqs_.at(seq);
  const size_t rb = row_bytes();
  for (int64_t l = 0; l < cfg_.n_layers; ++l)
    for (int kind = 0; kind < 2; ++kind) {
      const std::byte* in = src.data() + static_cast<size_t>(l * 2 + kind) * rb * static_cast<size_t>(n_tokens);
      for (int64_t p = 0; p * cfg_.page_size < n_tokens; ++p) {
        const int64_t n = std::min(cfg_.page_size, n_tokens - p * cfg_.page_size);
        std::memcpy(block(s.pages[static_cast<size_t>(p)], l, kind), in + static_cast<size_t>(p * cfg_.page_size) * rb,
                    static_cast<size_t>(n) * rb);
      }
    }
  return errc::ok;
}

}  // namespace troupe
