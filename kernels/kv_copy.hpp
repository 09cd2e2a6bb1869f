// Moves K/V rows between activations, paged KV storage and the contiguous
// block-free transfer layout, on the CPU and (CUDA builds) the GPU:
//  - append: a step's new K and V rows go to their slots (slot = page *
//    page_size + offset in page), in the paged layout of attention's paged_kv;
//  - gather / scatter: one sequence's KV of a layer range to and from one
//    contiguous buffer [layer][k|v][token][kv_head][head_dim], the layout of
//    model/kv_cache's gather/scatter (the unit of P->D KV transfer).
// Pure byte copies (any dtype; rows are n_kv_heads * head_dim elements), so
// the CPU and GPU versions are bit-identical.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/attention.hpp"
#include "kernels/cuda_stream.hpp"

namespace troupe {

/// New K and V rows of n_tokens tokens for one layer. Token t's K row is at
/// k + t * k_stride elements, its V row at v + t * v_stride (a row is
/// [n_kv_heads][head_dim] of the cache dtype), so K and V may be slices of a
/// fused QKV projection output.
struct kv_append_args {
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t k_stride = 0;           ///< elements between tokens; 0 = one row (packed)
  int64_t v_stride = 0;           ///< elements between tokens; 0 = one row (packed)
  const int32_t* slots = nullptr;  ///< n_tokens slots; a negative slot skips its token (padding)
  int64_t n_tokens = 0;
};

/// One sequence's tokens [first_token, first_token + n_tokens) of layers
/// [0, n_layers) of a paged cache, where layer l's view is `layer0` with
/// k_offset and v_offset moved by l * layer_stride bytes (model/kv_cache:
/// layer_view(first), layer_stride = 2 * page_size * row bytes).
struct kv_transfer_args {
  paged_kv layer0;                     ///< view of the range's first layer (base must be writable for scatter)
  size_t layer_stride = 0;             ///< bytes between one layer's blocks and the next's, within a page
  int64_t n_layers = 1;
  const int32_t* page_table = nullptr;  ///< the sequence's pages, in order
  int64_t first_token = 0;
  int64_t n_tokens = 0;
};

/// Bytes of the contiguous transfer buffer for `a`: n_layers * 2 * n_tokens rows.
size_t kv_transfer_bytes(const kv_transfer_args& a);

/// Writes the rows of `a` into the pages of `kv` (its base must be writable).
/// Throws error(errc_invalid_argument) for a bad shape.
void kv_append(const paged_kv& kv, const kv_append_args& a);

/// Copies the sequence's KV into dst ([layer][k|v][token][kv_head][head_dim],
/// kv_transfer_bytes(a) bytes).
void kv_gather(const kv_transfer_args& a, void* dst);

/// Copies src (the gather layout) into the sequence's pages.
void kv_scatter(const kv_transfer_args& a, const void* src);

// ---- CUDA (kernels/cuda/kv_copy.cu; CUDA builds only) ----
// Same operations on device memory (storage, rows, slots, page tables and
// buffers all on the device), on stream s; bit-identical to the CPU twins.
// Copies use 16-byte accesses when every size, offset and pointer allows.

/// kv_append on the GPU.
void kv_append_cuda(const paged_kv& kv, const kv_append_args& a, cuda_stream s);

/// kv_gather on the GPU.
void kv_gather_cuda(const kv_transfer_args& a, void* dst, cuda_stream s);

/// kv_scatter on the GPU.
void kv_scatter_cuda(const kv_transfer_args& a, const void* src, cuda_stream s);

}  // namespace troupe
