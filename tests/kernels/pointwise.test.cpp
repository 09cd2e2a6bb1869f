// RMSNorm, SwiGLU, embedding and the logits head against double references.
#include <doctest/doctest.h>

#include "kernels/embedding.hpp"
#include "kernels/logits.hpp"
#include "kernels/rmsnorm.hpp"
#include "kernels/swiglu.hpp"
#include "reference.hpp"

using namespace troupe;
using troupe_test::random_floats;

TEST_CASE("rmsnorm: matches the double reference, in place too") {
  const int64_t rows = 9, dim = 96;
  std::vector<float> x = random_floats(static_cast<size_t>(rows * dim), 1, 3.0f);
  std::vector<float> w = random_floats(static_cast<size_t>(dim), 2);
  const auto wb = troupe_test::store(dtype::dtype_bf16, w);
  std::vector<double> want(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += double(x[r * dim + i]) * x[r * dim + i];
    const double inv = 1.0 / std::sqrt(ss / dim + 1e-6);
    for (int64_t i = 0; i < dim; ++i) want[r * dim + i] = x[r * dim + i] * inv * w[i];
  }
  std::vector<float> y(x.size());
  rmsnorm(x.data(), y.data(), rows, dim, dtype::dtype_bf16, wb.data(), 1e-6f);
  CHECK(troupe_test::rel_err(y, want) < 1e-6);
  rmsnorm(x.data(), x.data(), rows, dim, dtype::dtype_bf16, wb.data(), 1e-6f);
  CHECK(troupe_test::rel_err(x, want) < 1e-6);
}

TEST_CASE("swiglu: silu(gate) * up") {
  std::vector<float> g = random_floats(1000, 3, 4.0f), u = random_floats(1000, 4), out(1000);
  std::vector<double> want(1000);
  for (size_t i = 0; i < 1000; ++i) want[i] = g[i] / (1.0 + std::exp(-double(g[i]))) * u[i];
  swiglu(g.data(), u.data(), out.data(), 1000);
  CHECK(troupe_test::rel_err(out, want) < 1e-6);
}

TEST_CASE("embedding: gathers and widens rows") {
  const int64_t vocab = 50, dim = 16;
  std::vector<float> table = random_floats(static_cast<size_t>(vocab * dim), 5);
  const auto tb = troupe_test::store(dtype::dtype_f16, table);
  const int32_t ids[] = {49, 0, 7, 7};
  std::vector<float> out(4 * dim);
  embedding(ids, 4, dtype::dtype_f16, tb.data(), dim, out.data());
  for (int t = 0; t < 4; ++t)
    for (int64_t i = 0; i < dim; ++i) CHECK(out[t * dim + i] == table[ids[t] * dim + i]);
}

TEST_CASE("logits_compute: only the asked-for rows, normed then projected") {
  const int64_t dim = 32, vocab = 40, rows_total = 6;
  std::vector<float> h = random_floats(static_cast<size_t>(rows_total * dim), 6);
  std::vector<float> norm = random_floats(static_cast<size_t>(dim), 7);
  std::vector<float> head = random_floats(static_cast<size_t>(vocab * dim), 8);
  const int32_t rows[] = {5, 2};
  std::vector<float> out(2 * vocab);
  logits_compute(h.data(), rows, 2, {dtype::dtype_f32, norm.data(), 1, dim}, 1e-5f,
                 {dtype::dtype_f32, head.data(), vocab, dim}, out.data());
  std::vector<double> want(out.size());
  for (int i = 0; i < 2; ++i) {
    const float* x = h.data() + rows[i] * dim;
    double ss = 0;
    for (int64_t c = 0; c < dim; ++c) ss += double(x[c]) * x[c];
    const double inv = 1.0 / std::sqrt(ss / dim + 1e-5);
    for (int64_t v = 0; v < vocab; ++v) {
      double acc = 0;
      for (int64_t c = 0; c < dim; ++c) acc += x[c] * inv * norm[c] * head[v * dim + c];
      want[i * vocab + v] = acc;
    }
  }
  CHECK(troupe_test::rel_err(out, want) < 1e-5);
}
