// rmsnorm_cuda / rmsnorm_residual_cuda against the CPU rmsnorm run on the same
// bf16-rounded inputs. Criterion: norm-relative error ||got - ref|| / ||ref||
// <= 1e-2 and, per element, |got - ref| <= 1e-2 * |ref| + 1e-2 * rms(ref)
// (the bf16 output rounding alone is ~4e-3 relative); no NaN sentinel left.
// The stored residual must equal bf16(residual + x) exactly.
#include "kernels/rmsnorm.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "config/errors.hpp"
#include "kernels/device_buffer.hpp"
#include "tests/kernels/reference.hpp"

using namespace troupe;

namespace {

std::vector<uint16_t> to_bf16(std::vector<float>& v) {  // rounds v in place, returns the bits
  std::vector<uint16_t> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    b[i] = f32_to_bf16(v[i]);
    v[i] = bf16_to_f32(b[i]);
  }
  return b;
}

device_buffer upload(const std::vector<uint16_t>& h) {
  device_buffer d(h.size() * 2);
  d.upload(h.data(), h.size() * 2);
  return d;
}

std::vector<uint16_t> download(const device_buffer& d, size_t n) {
  std::vector<uint16_t> h(n);
  d.download(h.data(), n * 2);
  return h;
}

void compare(const std::vector<uint16_t>& got, const std::vector<float>& ref, double& worst_rel) {
  double num = 0, den = 0, max_abs = 0;
  size_t nan = 0, bad = 0;
  for (float r : ref) den += double(r) * r;
  const double rms = std::sqrt(den / double(ref.size()));
  for (size_t i = 0; i < got.size(); ++i) {
    const float g = bf16_to_f32(got[i]);
    if (std::isnan(g)) {
      ++nan;
      continue;
    }
    const double e = std::fabs(double(g) - ref[i]);
    num += e * e;
    max_abs = std::max(max_abs, e);
    if (e > 1e-2 * std::fabs(ref[i]) + 1e-2 * rms) ++bad;
  }
  const double rel = std::sqrt(num / den);
  worst_rel = std::max(worst_rel, rel);
  CHECK(nan == 0);
  CHECK(bad == 0);
  CHECK(rel <= 1e-2);
  CAPTURE(max_abs);
}

}  // namespace

TEST_CASE("rmsnorm_cuda and rmsnorm_residual_cuda match the CPU rmsnorm") {
  struct shape {
    int64_t rows, dim;
  };
  double worst_plain = 0, worst_resid = 0;
  for (const shape sh : {shape{1, 4096}, shape{7, 4096}, shape{7 * 32, 128}, shape{5 * 8, 64}, shape{3, 1000},
                         shape{9, 333}, shape{4, 130}, shape{2, 14336}, shape{129, 5120}, shape{3, 256}}) {
    CAPTURE(sh.rows);
    CAPTURE(sh.dim);
    const size_t n = static_cast<size_t>(sh.rows * sh.dim);
    std::vector<float> x = troupe_test::random_floats(n, 1 + sh.dim, 1.0f);
    std::vector<float> res = troupe_test::random_floats(n, 2 + sh.dim, 2.0f);
    std::vector<float> w = troupe_test::random_floats(static_cast<size_t>(sh.dim), 3 + sh.dim, 0.2f);
    for (float& v : w) v += 1.0f;
    const auto xb = to_bf16(x), rb = to_bf16(res), wb = to_bf16(w);
    const float eps = 1e-5f;

    // Plain: also in place (y aliases x).
    std::vector<float> want(n);
    rmsnorm(x.data(), want.data(), sh.rows, sh.dim, dtype::dtype_bf16, wb.data(), eps);
    device_buffer dx = upload(xb), dw = upload(wb), dy(n * 2);
    dy.fill(0xff);
    rmsnorm_cuda(dx.as<uint16_t>(), dy.as<uint16_t>(), sh.rows, sh.dim, dw.as<uint16_t>(), eps, nullptr);
    cuda_sync(nullptr);
    compare(download(dy, n), want, worst_plain);
    rmsnorm_cuda(dx.as<uint16_t>(), dx.as<uint16_t>(), sh.rows, sh.dim, dw.as<uint16_t>(), eps, nullptr);
    cuda_sync(nullptr);
    CHECK(download(dx, n) == download(dy, n));

    // Residual: residual = bf16(residual + x); y = rmsnorm(residual) * w.
    std::vector<float> sum(n);
    for (size_t i = 0; i < n; ++i) sum[i] = x[i] + res[i];
    const auto sumb = to_bf16(sum);
    rmsnorm(sum.data(), want.data(), sh.rows, sh.dim, dtype::dtype_bf16, wb.data(), eps);
    device_buffer dx2 = upload(xb), dr = upload(rb);
    dy.fill(0xff);
    rmsnorm_residual_cuda(dx2.as<uint16_t>(), dr.as<uint16_t>(), dy.as<uint16_t>(), sh.rows, sh.dim,
                          dw.as<uint16_t>(), eps, nullptr);
    cuda_sync(nullptr);
    CHECK(download(dr, n) == sumb);
    compare(download(dy, n), want, worst_resid);
  }
  MESSAGE("rmsnorm max norm-relative error: plain " << worst_plain << ", residual " << worst_resid);
  CHECK_THROWS_AS(rmsnorm_cuda(nullptr, nullptr, 1, 0, nullptr, 1e-5f, nullptr), troupe::error);
  CHECK_THROWS_AS(rmsnorm_cuda(nullptr, nullptr, 1, 64, nullptr, 1e-5f, nullptr), troupe::error);
}
