// CUDA KV copies (append, gather, scatter): every operation is a list of
// rows (one token's K or V row of one layer) each copied from one address to
// another, so one copy kernel serves all three, parameterised by a small
// address map that mirrors the CPU twin's row addressing. Each row is copied
// by a row of threads with the widest unit (16, 8, 4, 2 or 1 bytes) that
// every pointer, offset, stride and the row size allow; several rows per
// block and a capped grid-stride loop keep short rows (1-2 KiB) efficient.
#include <algorithm>
#include <cstdint>
#include <string>

#include "config/errors.hpp"
#include "kernels/cuda/check.cuh"
#include "kernels/kv_copy.hpp"

namespace troupe {

namespace {

struct append_map {
  const char* k;
  const char* v;
  size_t k_stride, v_stride;  // bytes between tokens
  const int32_t* slots;
  char* base;
  size_t page_stride, k_offset, v_offset, row_bytes;
  int64_t page_size;
  // Row r: token r / 2, K (even) or V (odd).
  __device__ bool operator()(int64_t r, const char*& src, char*& dst) const {
    const int64_t t = r >> 1;
    const int kind = static_cast<int>(r & 1);
    const int64_t slot = slots[t];
    if (slot < 0) return false;
    src = kind == 0 ? k + t * k_stride : v + t * v_stride;
    dst = base + static_cast<size_t>(slot / page_size) * page_stride + (kind == 0 ? k_offset : v_offset) +
          static_cast<size_t>(slot % page_size) * row_bytes;
    return true;
  }
};

struct transfer_map {
  char* base;
  size_t page_stride, layer_stride, k_offset, v_offset, row_bytes;
  int64_t page_size, first_token, n_tokens;
  const int32_t* page_table;
  char* buf;
  bool to_buf;  // gather (pages -> buf) or scatter (buf -> pages)
  // Row r = (layer * 2 + kind) * n_tokens + t, the buffer's row order.
  __device__ bool operator()(int64_t r, const char*& src, char*& dst) const {
    const int64_t lk = r / n_tokens;
    const int64_t tok = first_token + (r - lk * n_tokens);
    const int64_t layer = lk >> 1;
    const int kind = static_cast<int>(lk & 1);
    char* paged = base + static_cast<size_t>(page_table[tok / page_size]) * page_stride +
                  static_cast<size_t>(layer) * layer_stride + (kind == 0 ? k_offset : v_offset) +
                  static_cast<size_t>(tok % page_size) * row_bytes;
    char* flat = buf + static_cast<size_t>(r) * row_bytes;
    src = to_buf ? paged : flat;
    dst = to_buf ? flat : paged;
    return true;
  }
};

// blockDim = (threads per row, rows per block).
template <class Unit, class Map>
__global__ void copy_rows_kernel(Map map, int64_t n_rows, int64_t units) {
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; r < n_rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const char* src;
    char* dst;
    if (!map(r, src, dst)) continue;
    const Unit* s = reinterpret_cast<const Unit*>(src);
    Unit* d = reinterpret_cast<Unit*>(dst);
    for (int64_t u = threadIdx.x; u < units; u += blockDim.x) d[u] = s[u];
  }
}

int sm_count() {
  static int n = [] {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      v = 132;
    return v;
  }();
  return n;
}

template <class Unit, class Map>
void launch_unit(const Map& map, int64_t n_rows, size_t row_bytes, cuda_stream s) {
  const int64_t units = static_cast<int64_t>(row_bytes / sizeof(Unit));
  int tx = 8;
  while (tx < 256 && tx < units) tx *= 2;
  const int ty = 256 / tx;
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>((n_rows + ty - 1) / ty, sm_count() * 32));
  copy_rows_kernel<Unit, Map><<<static_cast<unsigned>(blocks), dim3(tx, ty), 0, s>>>(map, n_rows, units);
  TROUPE_CUDA_LAUNCH_CHECK("copy_rows_kernel");
}

// `align` is the OR of every byte address, offset and stride involved.
template <class Map>
void launch(const Map& map, int64_t n_rows, size_t row_bytes, uint64_t align, cuda_stream s) {
  align |= row_bytes;
  if (align % 16 == 0)
    launch_unit<uint4>(map, n_rows, row_bytes, s);
  else if (align % 8 == 0)
    launch_unit<uint2>(map, n_rows, row_bytes, s);
  else if (align % 4 == 0)
    launch_unit<uint32_t>(map, n_rows, row_bytes, s);
  else if (align % 2 == 0)
    launch_unit<uint16_t>(map, n_rows, row_bytes, s);
  else
    launch_unit<uint8_t>(map, n_rows, row_bytes, s);
}

size_t row_bytes_of(const paged_kv& kv) {
  return static_cast<size_t>(kv.n_kv_heads * kv.head_dim) * dtype_size(kv.type);
}

void check_kv(const paged_kv& kv, const std::string& fn) {
  if (kv.base == nullptr || kv.page_size <= 0 || kv.n_kv_heads <= 0 || kv.head_dim <= 0)
    throw error(errc::errc_invalid_argument, fn + ": paged_kv needs a base, page_size > 0, n_kv_heads > 0 and head_dim > 0");
}

void transfer(const kv_transfer_args& a, char* buf, bool to_buf, const std::string& fn, cuda_stream s) {
  check_kv(a.layer0, fn);
  if (a.n_layers <= 0 || a.n_tokens < 0 || a.first_token < 0)
    throw error(errc::errc_invalid_argument, fn + ": n_layers must be > 0, n_tokens and first_token >= 0");
  if (a.n_tokens == 0) return;
  if (a.page_table == nullptr) throw error(errc::errc_invalid_argument, fn + ": page_table is null");
  if (buf == nullptr) throw error(errc::errc_invalid_argument, fn + (to_buf ? ": dst is null" : ": src is null"));
  const paged_kv& kv = a.layer0;
  const size_t rb = row_bytes_of(kv);
  transfer_map m{const_cast<char*>(reinterpret_cast<const char*>(kv.base)),
                 kv.page_stride,
                 a.layer_stride,
                 kv.k_offset,
                 kv.v_offset,
                 rb,
                 kv.page_size,
                 a.first_token,
                 a.n_tokens,
                 a.page_table,
                 buf,
                 to_buf};
  const uint64_t align = reinterpret_cast<uintptr_t>(kv.base) | kv.page_stride | a.layer_stride | kv.k_offset |
                         kv.v_offset | reinterpret_cast<uintptr_t>(buf);
  launch(m, a.n_layers * 2 * a.n_tokens, rb, align, s);
}

}  // namespace

void kv_append_cuda(const paged_kv& kv, const kv_append_args& a, cuda_stream s) {
  check_kv(kv, "kv_append_cuda");
  if (a.n_tokens < 0) throw error(errc::errc_invalid_argument, "kv_append_cuda: n_tokens must be >= 0");
  if (a.n_tokens == 0) return;
  if (a.k == nullptr || a.v == nullptr || a.slots == nullptr)
    throw error(errc::errc_invalid_argument, "kv_append_cuda: k, v and slots must be non-null");
  const int64_t row_elems = kv.n_kv_heads * kv.head_dim;
  if ((a.k_stride != 0 && a.k_stride < row_elems) || (a.v_stride != 0 && a.v_stride < row_elems))
    throw error(errc::errc_invalid_argument,
                "kv_append_cuda: k_stride and v_stride must be 0 or >= n_kv_heads * head_dim");
  const size_t rb = row_bytes_of(kv), es = dtype_size(kv.type);
  const size_t ks = static_cast<size_t>(a.k_stride ? a.k_stride : row_elems) * es;
  const size_t vs = static_cast<size_t>(a.v_stride ? a.v_stride : row_elems) * es;
  append_map m{static_cast<const char*>(a.k),
               static_cast<const char*>(a.v),
               ks,
               vs,
               a.slots,
               const_cast<char*>(reinterpret_cast<const char*>(kv.base)),
               kv.page_stride,
               kv.k_offset,
               kv.v_offset,
               rb,
               kv.page_size};
  const uint64_t align = reinterpret_cast<uintptr_t>(a.k) | reinterpret_cast<uintptr_t>(a.v) | ks | vs |
                         reinterpret_cast<uintptr_t>(kv.base) | kv.page_stride | kv.k_offset | kv.v_offset;
  launch(m, a.n_tokens * 2, rb, align, s);
}

void kv_gather_cuda(const kv_transfer_args& a, void* dst, cuda_stream s) {
  transfer(a, static_cast<char*>(dst), true, "kv_gather_cuda", s);
}

void kv_scatter_cuda(const kv_transfer_args& a, const void* src, cuda_stream s) {
  transfer(a, const_cast<char*>(static_cast<const char*>(src)), false, "kv_scatter_cuda", s);
}

}  // namespace troupe
