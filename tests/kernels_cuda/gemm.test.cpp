// gemm_bf16 (cuBLASLt) against the CPU matmul (fp32 over the same bf16
// values). Criterion: norm-relative error <= 1e-2 and per element |got - ref|
// <= 1e-2 * |ref| + 1e-2 * rms(ref); no NaN sentinel left; a cached-algorithm
// second call (cached algorithm) passes too.
#include "kernels/gemm.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "config/errors.hpp"
#include "kernels/device_buffer.hpp"
#include "kernels/matmul.hpp"
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

namespace {

void check_gemm(gemm_context& ctx, int64_t m, int64_t n, int64_t k, bool with_bias, double& worst) {
  CAPTURE(m);
  CAPTURE(n);
  CAPTURE(k);
  CAPTURE(with_bias);
  std::vector<float> x = troupe_test::random_floats(static_cast<size_t>(m * k), 21 + m + k);
  std::vector<float> w = troupe_test::random_floats(static_cast<size_t>(n * k), 22 + n, 0.05f);
  std::vector<float> b = troupe_test::random_floats(static_cast<size_t>(n), 23 + n);
  const auto xb = to_bf16(x), wb = to_bf16(w), bb = to_bf16(b);
  std::vector<float> want(static_cast<size_t>(m * n));
  const weight_ref wr{dtype::dtype_bf16, wb.data(), n, k};
  const weight_ref br{dtype::dtype_bf16, bb.data(), 1, n};
  matmul(x.data(), m, wr, with_bias ? &br : nullptr, want.data());
  device_buffer dx = upload(xb), dw = upload(wb), db = upload(bb), dy(static_cast<size_t>(m * n) * 2);
  dy.fill(0xff);
  gemm_bf16(ctx, dx.as<uint16_t>(), m, k, dw.as<uint16_t>(), n, with_bias ? db.as<uint16_t>() : nullptr,
            dy.as<uint16_t>(), nullptr);
  cuda_sync(nullptr);
  compare(download(dy, want.size()), want, worst);
  // Second call: the cached algorithm.
  dy.fill(0xff);
  gemm_bf16(ctx, dx.as<uint16_t>(), m, k, dw.as<uint16_t>(), n, with_bias ? db.as<uint16_t>() : nullptr,
            dy.as<uint16_t>(), nullptr);
  cuda_sync(nullptr);
  compare(download(dy, want.size()), want, worst);
}

}  // namespace

TEST_CASE("gemm_bf16 matches the CPU matmul at Llama-like shapes (y = x W^T, HF layout)") {
  gemm_context ctx;
  ctx.set_path(gemm_path::gemm_path_cublaslt);  // small m would go to the GEMV kernel and not be cached
  double worst = 0;
  struct nk {
    int64_t n, k;
  };
  for (const int64_t m : {int64_t{1}, int64_t{7}, int64_t{128}, int64_t{1000}})
    for (const nk s : {nk{6144, 4096}, nk{4096, 14336}, nk{1024, 4096}})
      check_gemm(ctx, m, s.n, s.k, false, worst);
  check_gemm(ctx, 7, 4096, 4096, true, worst);
  check_gemm(ctx, 128, 1024, 512, true, worst);
  CHECK(ctx.cached_shapes() >= 14);
  MESSAGE("gemm max norm-relative error " << worst);
  CHECK_THROWS_AS(gemm_bf16(ctx, nullptr, 1, 0, nullptr, 8, nullptr, nullptr, nullptr), troupe::error);
}

TEST_CASE("gemm_bf16 with odd n and k (unaligned leading dimensions)") {
  gemm_context ctx;
  double worst = 0;
  check_gemm(ctx, 7, 999, 335, true, worst);
  check_gemm(ctx, 33, 130, 66, false, worst);
  MESSAGE("gemm (odd shapes) max norm-relative error " << worst);
}
