// CPU paged attention: one (query token, kv head) pair per work item, so the
// group of query heads sharing a kv head reads each K/V row once. Scores for
// the visible keys are kept in a per-thread buffer, softmax is exact two-pass
// (max, then exp-sum) in fp32 with double accumulation of the denominator.
#include "kernels/attention.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace troupe {

namespace {

inline const std::byte* kv_row(const paged_kv& kv, const int32_t* pages, int64_t pos, size_t offset) {
  const int64_t page = pages[pos / kv.page_size];
  const int64_t slot = pos % kv.page_size;
  const size_t row_bytes = static_cast<size_t>(kv.n_kv_heads * kv.head_dim) * dtype_size(kv.type);
  return kv.base + static_cast<size_t>(page) * kv.page_stride + offset + static_cast<size_t>(slot) * row_bytes;
}

}  // namespace

void attention_paged(const attention_args& a, const paged_kv& kv) {
  const int64_t d = kv.head_dim;
  const int64_t group = a.n_heads / kv.n_kv_heads;
  const size_t esz = dtype_size(kv.type);
  const int64_t work = a.n_tokens * kv.n_kv_heads;
#pragma omp parallel if (work * a.kv_len * d > 65536)
  {
    std::vector<float> scores;
    std::vector<float> krow(static_cast<size_t>(d)), vrow(static_cast<size_t>(d));
    std::vector<float> acc(static_cast<size_t>(group * d));
#pragma omp for schedule(dynamic, 4)
    for (int64_t w = 0; w < work; ++w) {
      const int64_t t = w / kv.n_kv_heads, kvh = w % kv.n_kv_heads;
      const int64_t qpos = a.q_pos0 + t;
      const int64_t lo = a.sliding_window > 0 ? std::max<int64_t>(0, qpos - a.sliding_window + 1) : 0;
      const int64_t n_keys = qpos + 1 - lo;
      scores.resize(static_cast<size_t>(group * n_keys));
      for (int64_t j = 0; j < n_keys; ++j) {
        convert_to_f32(kv.type, kv_row(kv, a.page_table, lo + j, kv.k_offset) + kvh * d * esz, krow.data(), krow.size());
        for (int64_t g = 0; g < group; ++g) {
          const float* q = a.q + (t * a.n_heads + kvh * group + g) * d;
          float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
          for (int64_t c = 0; c < d; ++c) dot += q[c] * krow[c];
          scores[g * n_keys + j] = dot * a.scale;
        }
      }
      for (int64_t g = 0; g < group; ++g) {
        float* s = scores.data() + g * n_keys;
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < n_keys; ++j) mx = std::max(mx, s[j]);
        double sum = 0.0;
        for (int64_t j = 0; j < n_keys; ++j) {
          s[j] = std::exp(s[j] - mx);
          sum += s[j];
        }
        const float inv = static_cast<float>(1.0 / sum);
        for (int64_t j = 0; j < n_keys; ++j) s[j] *= inv;
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t j = 0; j < n_keys; ++j) {
        convert_to_f32(kv.type, kv_row(kv, a.page_table, lo + j, kv.v_offset) + kvh * d * esz, vrow.data(), vrow.size());
        for (int64_t g = 0; g < group; ++g) {
          const float p = scores[g * n_keys + j];
          float* o = acc.data() + g * d;
#pragma omp simd
          for (int64_t c = 0; c < d; ++c) o[c] += p * vrow[c];
        }
      }
      for (int64_t g = 0; g < group; ++g) {
        float* out = a.out + (t * a.n_heads + kvh * group + g) * d;
        std::copy(acc.begin() + g * d, acc.begin() + (g + 1) * d, out);
      }
    }
  }
}

}  // namespace troupe
