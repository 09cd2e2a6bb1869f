// See kernels/attention_generic.hpp. Grid (query slot, head, sequence); lane
// j of the warp owns dims j, j + 32, ... (at most 8 per lane).
#include <cstdint>
#include <string>

#include <cuda_bf16.h>

#include "config/errors.hpp"
#include "kernels/attention_generic.hpp"
#include "kernels/cuda/check.cuh"

namespace troupe {

namespace {

using bf16 = __nv_bfloat16;
constexpr int kMaxPer = 8;

__global__ void attention_generic_kernel(attention_batch_cuda b, paged_kv kv) {
  const int64_t t = blockIdx.x, h = blockIdx.y, seq = blockIdx.z;
  const int lane = threadIdx.x;
  const int32_t q0 = b.cu_seqlens_q[seq], q_len = b.cu_seqlens_q[seq + 1] - q0;
  if (t >= q_len) return;
  const int64_t dh = kv.head_dim;
  bf16* out = reinterpret_cast<bf16*>(b.out) + ((q0 + t) * b.n_heads + h) * dh;
  const int32_t kv_len = b.kv_lens[seq];
  if (kv_len <= 0) {
    for (int64_t d = lane; d < dh; d += 32) out[d] = __float2bfloat16_rn(0.0f);
    return;
  }
  const bf16* q = reinterpret_cast<const bf16*>(b.q) + ((q0 + t) * b.n_heads + h) * dh;
  float qv[kMaxPer], acc[kMaxPer];
#pragma unroll
  for (int i = 0; i < kMaxPer; ++i) {
    const int64_t d = lane + 32 * i;
    qv[i] = d < dh ? __bfloat162float(q[d]) : 0.0f;
    acc[i] = 0.0f;
  }
  const int64_t pos = static_cast<int64_t>(b.q_pos0[seq]) + t;
  const int64_t kvh = h / (b.n_heads / kv.n_kv_heads);
  int64_t first = 0;
  if (b.sliding_window > 0 && pos - b.sliding_window + 1 > 0) first = pos - b.sliding_window + 1;
  const int64_t last = pos < kv_len - 1 ? pos : kv_len - 1;
  const int32_t* table = b.block_table + seq * b.block_table_stride;
  const size_t row_bytes = static_cast<size_t>(kv.n_kv_heads * dh) * 2;
  float m = -INFINITY, l = 0.0f;
  for (int64_t k = first; k <= last; ++k) {
    const std::byte* page = kv.base + static_cast<size_t>(table[k / kv.page_size]) * kv.page_stride +
                            static_cast<size_t>(k % kv.page_size) * row_bytes;
    const bf16* kr = reinterpret_cast<const bf16*>(page + kv.k_offset) + kvh * dh;
    const bf16* vr = reinterpret_cast<const bf16*>(page + kv.v_offset) + kvh * dh;
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < kMaxPer; ++i) {
      const int64_t d = lane + 32 * i;
      if (d < dh) dot += qv[i] * __bfloat162float(kr[d]);
    }
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    const float sc = dot * b.scale;
    const float mn = fmaxf(m, sc);
    const float corr = __expf(m - mn), p = __expf(sc - mn);
    l = l * corr + p;
#pragma unroll
    for (int i = 0; i < kMaxPer; ++i) {
      const int64_t d = lane + 32 * i;
      acc[i] = acc[i] * corr + (d < dh ? p * __bfloat162float(vr[d]) : 0.0f);
    }
    m = mn;
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
  for (int i = 0; i < kMaxPer; ++i) {
    const int64_t d = lane + 32 * i;
    if (d < dh) out[d] = __float2bfloat16_rn(acc[i] * inv);
  }
}

}  // namespace

void attention_generic_cuda(const attention_batch_cuda& b, const paged_kv& kv, int64_t max_q_len, cuda_stream s) {
  if (kv.head_dim <= 0 || kv.head_dim > 32 * kMaxPer || kv.n_kv_heads <= 0 || b.n_heads % kv.n_kv_heads != 0 ||
      kv.type != dtype::dtype_bf16 || b.q == nullptr || b.out == nullptr || b.cu_seqlens_q == nullptr ||
      b.kv_lens == nullptr || b.q_pos0 == nullptr || b.block_table == nullptr || kv.base == nullptr)
    throw error(errc::errc_invalid_argument, "attention_generic_cuda: bad shape, dtype or null pointer (head_dim " +
                                                 std::to_string(kv.head_dim) + ")");
  if (b.n_seqs <= 0 || max_q_len <= 0) return;
  if (max_q_len > INT32_MAX || b.n_seqs > 65535 || b.n_heads > 65535)
    throw error(errc::errc_invalid_argument, "attention_generic_cuda: grid too large");
  const dim3 grid(static_cast<unsigned>(max_q_len), static_cast<unsigned>(b.n_heads), static_cast<unsigned>(b.n_seqs));
  attention_generic_kernel<<<grid, 32, 0, s>>>(b, kv);
  TROUPE_CUDA_LAUNCH_CHECK("attention_generic_kernel");
}

}  // namespace troupe
