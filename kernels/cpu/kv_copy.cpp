// CPU KV copies: one memcpy per row; the row addressing is spelled out once
// per operation so the CUDA twin (kernels/cuda/kv_copy.cu) can mirror it.
#include "kernels/kv_copy.hpp"

#include <cstring>
#include <string>

#include "config/errors.hpp"

namespace troupe {

namespace {

size_t row_bytes(const paged_kv& kv) { return static_cast<size_t>(kv.n_kv_heads * kv.head_dim) * dtype_size(kv.type); }

void check_kv(const paged_kv& kv, const char* fn) {
  if (kv.base == nullptr || kv.page_size <= 0 || kv.n_kv_heads <= 0 || kv.head_dim <= 0)
    throw error(errc::errc_invalid_argument,
                std::string(fn) + ": paged_kv needs a base, page_size > 0, n_kv_heads > 0 and head_dim > 0");
}

void check_transfer(const kv_transfer_args& a, const char* fn) {
  check_kv(a.layer0, fn);
  if (a.n_layers <= 0 || a.n_tokens < 0 || a.first_token < 0)
    throw error(errc::errc_invalid_argument, std::string(fn) + ": n_layers must be > 0, n_tokens and first_token >= 0");
  if (a.n_tokens > 0 && a.page_table == nullptr)
    throw error(errc::errc_invalid_argument, std::string(fn) + ": page_table is null");
}

// Address of token `tok`'s row of layer l, kind (0 = K, 1 = V), in the pages.
std::byte* paged_row(const kv_transfer_args& a, int64_t l, int kind, int64_t tok) {
  const paged_kv& kv = a.layer0;
  const int64_t page = a.page_table[tok / kv.page_size];
  return const_cast<std::byte*>(kv.base) + static_cast<size_t>(page) * kv.page_stride +
         static_cast<size_t>(l) * a.layer_stride + (kind == 0 ? kv.k_offset : kv.v_offset) +
         static_cast<size_t>(tok % kv.page_size) * row_bytes(kv);
}

}  // namespace

size_t kv_transfer_bytes(const kv_transfer_args& a) {
  return row_bytes(a.layer0) * static_cast<size_t>(a.n_tokens) * 2 * static_cast<size_t>(a.n_layers);
}

void kv_append(const paged_kv& kv, const kv_append_args& a) {
  check_kv(kv, "kv_append");
  if (a.n_tokens < 0) throw error(errc::errc_invalid_argument, "kv_append: n_tokens must be >= 0");
  if (a.n_tokens == 0) return;
  if (a.k == nullptr || a.v == nullptr || a.slots == nullptr)
    throw error(errc::errc_invalid_argument, "kv_append: k, v and slots must be non-null");
  const int64_t row_elems = kv.n_kv_heads * kv.head_dim;
  if ((a.k_stride != 0 && a.k_stride < row_elems) || (a.v_stride != 0 && a.v_stride < row_elems))
    throw error(errc::errc_invalid_argument, "kv_append: k_stride and v_stride must be 0 or >= n_kv_heads * head_dim");
  const size_t rb = row_bytes(kv), es = dtype_size(kv.type);
  const size_t ks = static_cast<size_t>(a.k_stride ? a.k_stride : row_elems) * es;
  const size_t vs = static_cast<size_t>(a.v_stride ? a.v_stride : row_elems) * es;
  auto* base = const_cast<std::byte*>(kv.base);
  for (int64_t t = 0; t < a.n_tokens; ++t) {
    const int64_t slot = a.slots[t];
    if (slot < 0) continue;
    std::byte* page = base + static_cast<size_t>(slot / kv.page_size) * kv.page_stride;
    const size_t off = static_cast<size_t>(slot % kv.page_size) * rb;
    std::memcpy(page + kv.k_offset + off, static_cast<const std::byte*>(a.k) + static_cast<size_t>(t) * ks, rb);
    std::memcpy(page + kv.v_offset + off, static_cast<const std::byte*>(a.v) + static_cast<size_t>(t) * vs, rb);
  }
}

void kv_gather(const kv_transfer_args& a, void* dst) {
  check_transfer(a, "kv_gather");
  if (a.n_tokens == 0) return;
  if (dst == nullptr) throw error(errc::errc_invalid_argument, "kv_gather: dst is null");
  const size_t rb = row_bytes(a.layer0);
  auto* out = static_cast<std::byte*>(dst);
  for (int64_t l = 0; l < a.n_layers; ++l)
    for (int kind = 0; kind < 2; ++kind)
      for (int64_t t = 0; t < a.n_tokens; ++t)
        std::memcpy(out + static_cast<size_t>((l * 2 + kind) * a.n_tokens + t) * rb,
                    paged_row(a, l, kind, a.first_token + t), rb);
}

void kv_scatter(const kv_transfer_args& a, const void* src) {
  check_transfer(a, "kv_scatter");
  if (a.n_tokens == 0) return;
  if (src == nullptr) throw error(errc::errc_invalid_argument, "kv_scatter: src is null");
  const size_t rb = row_bytes(a.layer0);
  const auto* in = static_cast<const std::byte*>(src);
  for (int64_t l = 0; l < a.n_layers; ++l)
    for (int kind = 0; kind < 2; ++kind)
      for (int64_t t = 0; t < a.n_tokens; ++t)
        std::memcpy(paged_row(a, l, kind, a.first_token + t),
                    in + static_cast<size_t>((l * 2 + kind) * a.n_tokens + t) * rb, rb);
}

}  // namespace troupe
