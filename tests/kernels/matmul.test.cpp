#include "kernels/matmul.hpp"

#include <doctest/doctest.h>

#include "reference.hpp"

using namespace troupe;
using troupe_test::random_floats;

TEST_CASE("matmul: every dtype and both paths (m <= 4 and panels) match a double reference") {
  for (dtype t : {dtype::dtype_f32, dtype::dtype_bf16, dtype::dtype_f16}) {
    for (int64_t m : {1, 3, 5, 37}) {
      const int64_t n = 300, k = 70;
      CAPTURE(dtype_name(t));
      CAPTURE(m);
      std::vector<float> x = random_floats(static_cast<size_t>(m * k), 1 + m);
      std::vector<float> w = random_floats(static_cast<size_t>(n * k), 2 + m);
      std::vector<float> b = random_floats(static_cast<size_t>(n), 3 + m);
      const auto wb = troupe_test::store(t, w);
      const auto bb = troupe_test::store(t, b);
      const weight_ref wr{t, wb.data(), n, k}, br{t, bb.data(), 1, n};
      std::vector<float> y(static_cast<size_t>(m * n), std::nanf(""));
      matmul(x.data(), m, wr, &br, y.data());
      std::vector<double> want(y.size());
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
          double acc = b[static_cast<size_t>(j)];
          for (int64_t c = 0; c < k; ++c) acc += static_cast<double>(x[static_cast<size_t>(i * k + c)]) * w[static_cast<size_t>(j * k + c)];
          want[static_cast<size_t>(i * n + j)] = acc;
        }
      CHECK(troupe_test::rel_err(y, want) < 1e-5);
    }
  }
}
