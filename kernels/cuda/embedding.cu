// CUDA embedding lookup: a pure gather of bf16 rows, so it is a copy kernel.
// Each block copies whole rows with 16-byte loads and stores where the row
// length and pointers allow (8 bf16 per access), else 4- or 2-byte ones; one
// block row of threads per token and several tokens per block keep small
// dims from leaving threads idle. Ids are trusted (the caller validated them).
#include <algorithm>
#include <cstdint>

#include "config/errors.hpp"
#include "kernels/cuda/check.cuh"
#include "kernels/embedding.hpp"

namespace troupe {

namespace {

template <class Unit>
__global__ void embedding_kernel(const int32_t* __restrict__ ids, int64_t n, const Unit* __restrict__ table,
                                 int64_t units, Unit* __restrict__ out) {
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; t < n;
       t += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const Unit* src = table + static_cast<int64_t>(ids[t]) * units;
    Unit* dst = out + t * units;
    for (int64_t u = threadIdx.x; u < units; u += blockDim.x) dst[u] = src[u];
  }
}

template <class Unit>
void launch(const int32_t* ids, int64_t n, const void* table, int64_t row_bytes, void* out, cuda_stream s) {
  const int64_t units = row_bytes / static_cast<int64_t>(sizeof(Unit));
  int tx = 32;
  while (tx < 256 && tx < units) tx *= 2;
  const int ty = 256 / tx;
  const int64_t blocks = std::min<int64_t>((n + ty - 1) / ty, 65535);
  embedding_kernel<Unit><<<static_cast<unsigned>(blocks), dim3(tx, ty), 0, s>>>(
      ids, n, static_cast<const Unit*>(table), units, static_cast<Unit*>(out));
  TROUPE_CUDA_LAUNCH_CHECK("embedding_kernel");
}

}  // namespace

void embedding_cuda(const int32_t* ids, int64_t n, const uint16_t* table, int64_t dim, uint16_t* out, cuda_stream s) {
  if (n < 0) throw error(errc::errc_invalid_argument, "embedding_cuda: n must be >= 0");
  if (dim <= 0) throw error(errc::errc_invalid_argument, "embedding_cuda: dim must be > 0");
  if (n == 0) return;
  if (ids == nullptr || table == nullptr || out == nullptr)
    throw error(errc::errc_invalid_argument, "embedding_cuda: ids, table and out must be non-null");
  const int64_t row_bytes = dim * 2;
  const auto a = static_cast<uint64_t>(row_bytes) | reinterpret_cast<uintptr_t>(table) | reinterpret_cast<uintptr_t>(out);
  if (a % 16 == 0)
    launch<uint4>(ids, n, table, row_bytes, out, s);
  else if (a % 4 == 0)
    launch<uint32_t>(ids, n, table, row_bytes, out, s);
  else
    launch<uint16_t>(ids, n, table, row_bytes, out, s);
}

}  // namespace troupe
