#include "kernels/attention.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <numeric>

#include "reference.hpp"

using namespace troupe;

namespace {

// Dense double-precision attention of queries at positions q0.. over keys 0..kv_len-1.
std::vector<double> dense(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                          int64_t T, int64_t H, int64_t Hkv, int64_t D, int64_t q0, int64_t window) {
  std::vector<double> out(static_cast<size_t>(T * H * D), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kh = h / (H / Hkv), qp = q0 + t;
      std::vector<double> s;
      std::vector<int64_t> keys;
      for (int64_t j = 0; j <= qp; ++j) {
        if (window > 0 && qp - j >= window) continue;
        double dot = 0;
        for (int64_t c = 0; c < D; ++c) dot += double(q[(t * H + h) * D + c]) * k[(j * Hkv + kh) * D + c];
        s.push_back(dot / std::sqrt(double(D)));
        keys.push_back(j);
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (size_t i = 0; i < keys.size(); ++i)
        for (int64_t c = 0; c < D; ++c) out[(t * H + h) * D + c] += s[i] / sum * v[(keys[i] * Hkv + kh) * D + c];
    }
  return out;
}

}  // namespace

TEST_CASE("attention_paged: chunk over a cached prefix with GQA, shuffled pages, windows and dtypes") {
  const int64_t H = 8, Hkv = 2, D = 32, page = 4, n_pages = 12;
  for (dtype t : {dtype::dtype_f32, dtype::dtype_bf16}) {
    for (int64_t window : {0, 5}) {
      for (auto [q0, T] : {std::pair<int64_t, int64_t>{0, 13}, {20, 7}, {30, 1}}) {
        CAPTURE(dtype_name(t));
        CAPTURE(window);
        CAPTURE(q0);
        const int64_t kv_len = q0 + T;
        std::vector<float> q = troupe_test::random_floats(static_cast<size_t>(T * H * D), 11);
        std::vector<float> k = troupe_test::random_floats(static_cast<size_t>(kv_len * Hkv * D), 12);
        std::vector<float> v = troupe_test::random_floats(static_cast<size_t>(kv_len * Hkv * D), 13);
        troupe_test::store(t, k);  // round K and V to the cache type for the reference
        troupe_test::store(t, v);
        // Pages in a shuffled order; layout per page: [K block][V block], each [page][Hkv][D].
        std::vector<int32_t> table(static_cast<size_t>((kv_len + page - 1) / page));
        std::iota(table.begin(), table.end(), 0);
        std::reverse(table.begin(), table.end());
        const size_t row = static_cast<size_t>(Hkv * D) * dtype_size(t), block = row * page;
        std::vector<std::byte> cache(2 * block * n_pages);
        for (int64_t j = 0; j < kv_len; ++j) {
          std::byte* pg = cache.data() + static_cast<size_t>(table[j / page]) * 2 * block + (j % page) * row;
          convert_from_f32(t, k.data() + j * Hkv * D, pg, static_cast<size_t>(Hkv * D));
          convert_from_f32(t, v.data() + j * Hkv * D, pg + block, static_cast<size_t>(Hkv * D));
        }
        paged_kv kv{t, cache.data(), 2 * block, 0, block, page, Hkv, D};
        std::vector<float> out(q.size(), std::nanf(""));
        attention_args a{q.data(), out.data(), T, H, q0, table.data(), kv_len, window, 1.0f / std::sqrt(float(D))};
        attention_paged(a, kv);
        CHECK(troupe_test::rel_err(out, dense(q, k, v, T, H, Hkv, D, q0, window)) < 1e-5);
      }
    }
  }
}
