// CUDA RoPE. One block per token: its threads first compute the head_dim/2
// cos/sin values of that token's position into shared memory (fp32 sincosf of
// pos * inv_freq, as the CPU twin), then rotate every query and key head of
// the token from them, so the transcendental work is per token, not per head,
// and q and k share one launch. Each thread moves 8 bf16 of the first half
// and the matching 8 of the second half with 16-byte accesses when alignment
// allows (else one element). In place: each element is read and written by
// one thread. Optionally the rotated queries go to a packed buffer and the
// rotated keys plus the values to their KV-cache slots (the decode fusion):
// values are then extra "heads" that are copied unrotated.
#include <algorithm>
#include <cstdint>
#include <string>

#include <cuda_bf16.h>

#include "config/errors.hpp"
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/pdl.cuh"
#include "kernels/rope.hpp"

namespace troupe {

namespace {

using bf16 = __nv_bfloat16;
constexpr int kThreads = 128;

template <int VEC>
__device__ inline void load_vec(const bf16* p, float* f) {
  if constexpr (VEC == 8) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const auto* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 t = __bfloat1622float2(h[i]);
      f[2 * i] = t.x;
      f[2 * i + 1] = t.y;
    }
  } else {
    f[0] = __bfloat162float(*p);
  }
}

template <int VEC>
__device__ inline void store_vec(bf16* p, const float* f) {
  if constexpr (VEC == 8) {
    uint4 u;
    auto* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    *reinterpret_cast<uint4*>(p) = u;
  } else {
    *p = __float2bfloat16_rn(f[0]);
  }
}

// Where the fused variant writes: queries packed, keys and values to slots.
struct rope_dst {
  bf16* q_out = nullptr;       // null: in place
  char* kv_base = nullptr;     // null: keys in place, no values
  size_t page_stride = 0, k_offset = 0, v_offset = 0, row_bytes = 0;
  int64_t page_size = 1;
  const int32_t* slots = nullptr;
  const bf16* v = nullptr;
  int64_t v_stride = 0;
};

template <int VEC>
__global__ void rope_kernel(bf16* q, int nq, int64_t q_stride, bf16* k, int nk, int64_t k_stride, int64_t n_tokens,
                            int head_dim, const int32_t* __restrict__ pos, const float* __restrict__ inv_freq,
                            float scale, rope_dst dst) {
  pdl_wait();
  __shared__ float cs[512];
  __shared__ float sn[512];
  const int half = head_dim / 2;
  const int chunks = half / VEC;  // per head
  const int nv = dst.kv_base ? nk : 0;
  const int items = (nq + nk + nv) * chunks;
  for (int64_t t = blockIdx.x; t < n_tokens; t += gridDim.x) {
    const int64_t slot = dst.kv_base ? dst.slots[t] : 0;
    char* row = dst.kv_base && slot >= 0 ? dst.kv_base + static_cast<size_t>(slot / dst.page_size) * dst.page_stride +
                                               static_cast<size_t>(slot % dst.page_size) * dst.row_bytes
                                         : nullptr;
    const float p = static_cast<float>(pos[t]);
    for (int i = static_cast<int>(threadIdx.x); i < half; i += blockDim.x) {
      float sv, cv;
      sincosf(p * inv_freq[i], &sv, &cv);
      cs[i] = cv * scale;
      sn[i] = sv * scale;
    }
    __syncthreads();
    for (int idx = static_cast<int>(threadIdx.x); idx < items; idx += blockDim.x) {
      const int h = idx / chunks;
      const int c = (idx - h * chunks) * VEC;
      if (h >= nq + nk) {  // a value head: copied to its slot as is
        if (!row) continue;
        const int vh = h - nq - nk;
        const bf16* src = dst.v + t * dst.v_stride + static_cast<int64_t>(vh) * head_dim;
        bf16* out = reinterpret_cast<bf16*>(row + dst.v_offset) + static_cast<int64_t>(vh) * head_dim;
        float a[VEC], b[VEC];
        load_vec<VEC>(src + c, a);
        load_vec<VEC>(src + half + c, b);
        store_vec<VEC>(out + c, a);
        store_vec<VEC>(out + half + c, b);
        continue;
      }
      const bool is_q = h < nq;
      const bf16* in = is_q ? q + t * q_stride + static_cast<int64_t>(h) * head_dim
                            : k + t * k_stride + static_cast<int64_t>(h - nq) * head_dim;
      bf16* out;
      if (is_q) {
        out = dst.q_out ? dst.q_out + (t * nq + h) * static_cast<int64_t>(head_dim) : const_cast<bf16*>(in);
      } else if (dst.kv_base) {
        if (!row) continue;
        out = reinterpret_cast<bf16*>(row + dst.k_offset) + static_cast<int64_t>(h - nq) * head_dim;
      } else {
        out = const_cast<bf16*>(in);
      }
      float a[VEC], b[VEC], ra[VEC], rb[VEC];
      load_vec<VEC>(in + c, a);
      load_vec<VEC>(in + half + c, b);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        ra[e] = a[e] * cs[c + e] - b[e] * sn[c + e];
        rb[e] = b[e] * cs[c + e] + a[e] * sn[c + e];
      }
      store_vec<VEC>(out + c, ra);
      store_vec<VEC>(out + half + c, rb);
    }
    __syncthreads();
  }
}

void bad(const std::string& what) { throw error(errc::errc_invalid_argument, "rope_apply_cuda: " + what); }

}  // namespace

void rope_apply_cuda(const rope_cuda_args& a, cuda_stream s) {
  if (a.n_tokens < 0) bad("n_tokens must be >= 0");
  if (a.head_dim <= 0 || a.head_dim % 2 != 0 || a.head_dim > 1024) bad("head_dim must be even and in [2, 1024]");
  if (a.n_q_heads < 0 || a.n_k_heads < 0) bad("n_q_heads and n_k_heads must be >= 0");
  if (a.n_q_heads + a.n_k_heads > (1 << 20)) bad("too many heads");
  if (a.n_tokens == 0 || a.n_q_heads + a.n_k_heads == 0) return;
  if (a.n_q_heads > 0 && a.q == nullptr) bad("q is null");
  if (a.n_k_heads > 0 && a.k == nullptr) bad("k is null");
  if (a.pos == nullptr || a.inv_freq == nullptr) bad("pos and inv_freq must be non-null");
  const int64_t qs = a.q_stride == 0 ? a.n_q_heads * a.head_dim : a.q_stride;
  const int64_t ks = a.k_stride == 0 ? a.n_k_heads * a.head_dim : a.k_stride;
  if (qs < a.n_q_heads * a.head_dim) bad("q_stride is smaller than n_q_heads * head_dim");
  if (ks < a.n_k_heads * a.head_dim) bad("k_stride is smaller than n_k_heads * head_dim");
  const int half = static_cast<int>(a.head_dim / 2);
  rope_dst dst;
  dst.q_out = reinterpret_cast<bf16*>(a.q_out);
  uint64_t align = reinterpret_cast<uintptr_t>(a.q) | reinterpret_cast<uintptr_t>(a.k) |
                   static_cast<uint64_t>(qs * 2) | static_cast<uint64_t>(ks * 2) | static_cast<uint64_t>(half * 2) |
                   reinterpret_cast<uintptr_t>(a.q_out);
  if (a.kv != nullptr) {
    const paged_kv& kv = *a.kv;
    if (kv.type != dtype::dtype_bf16) bad("the KV destination must be bf16");
    if (kv.base == nullptr || kv.page_size <= 0) bad("the KV destination has no storage");
    if (kv.n_kv_heads != a.n_k_heads || kv.head_dim != a.head_dim)
      bad("the KV destination's heads (" + std::to_string(kv.n_kv_heads) + " x " + std::to_string(kv.head_dim) +
          ") differ from the keys' (" + std::to_string(a.n_k_heads) + " x " + std::to_string(a.head_dim) + ")");
    if (a.slots == nullptr || a.v == nullptr || a.k == nullptr) bad("a KV destination needs k, v and slots");
    const int64_t vs = a.v_stride == 0 ? a.n_k_heads * a.head_dim : a.v_stride;
    if (vs < a.n_k_heads * a.head_dim) bad("v_stride is smaller than n_k_heads * head_dim");
    dst.kv_base = const_cast<char*>(reinterpret_cast<const char*>(kv.base));
    dst.page_stride = kv.page_stride;
    dst.k_offset = kv.k_offset;
    dst.v_offset = kv.v_offset;
    dst.row_bytes = static_cast<size_t>(kv.n_kv_heads * kv.head_dim) * 2;
    dst.page_size = kv.page_size;
    dst.slots = a.slots;
    dst.v = reinterpret_cast<const bf16*>(a.v);
    dst.v_stride = vs;
    align |= reinterpret_cast<uintptr_t>(kv.base) | kv.page_stride | kv.k_offset | kv.v_offset | dst.row_bytes |
             reinterpret_cast<uintptr_t>(a.v) | static_cast<uint64_t>(vs * 2);
  }
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(a.n_tokens, 1 << 20));
  auto* q = reinterpret_cast<bf16*>(a.q);
  auto* k = reinterpret_cast<bf16*>(a.k);
  const int nq = static_cast<int>(a.n_q_heads), nk = static_cast<int>(a.n_k_heads);
  if (align % 16 == 0)
    launch_pdl("rope_kernel", rope_kernel<8>, dim3(blocks), dim3(kThreads), 0, s, q, nq, qs, k, nk, ks, a.n_tokens,
               static_cast<int>(a.head_dim), a.pos, a.inv_freq, a.attention_scaling, dst);
  else
    launch_pdl("rope_kernel", rope_kernel<1>, dim3(blocks), dim3(kThreads), 0, s, q, nq, qs, k, nk, ks, a.n_tokens,
               static_cast<int>(a.head_dim), a.pos, a.inv_freq, a.attention_scaling, dst);
}

}  // namespace troupe
