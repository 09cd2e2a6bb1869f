// swiglu_cuda / swiglu_fused_cuda against the CPU swiglu on the same
// bf16-rounded inputs. Criterion: norm-relative error <= 1e-2 and per element
// |got - ref| <= 1e-2 * |ref| + 1e-2 * rms(ref); no NaN sentinel left.
#include "kernels/swiglu.hpp"

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

TEST_CASE("swiglu_cuda (flat) and swiglu_fused_cuda (gate|up rows) match the CPU swiglu") {
  double worst = 0;
  for (const int64_t n : {int64_t{1}, int64_t{7}, int64_t{4096 * 3 + 5}, int64_t{14336 * 7}, int64_t{1002}}) {
    CAPTURE(n);
    std::vector<float> g = troupe_test::random_floats(static_cast<size_t>(n), 11 + n, 3.0f);
    std::vector<float> u = troupe_test::random_floats(static_cast<size_t>(n), 12 + n);
    const auto gb = to_bf16(g), ub = to_bf16(u);
    std::vector<float> want(static_cast<size_t>(n));
    swiglu(g.data(), u.data(), want.data(), n);
    device_buffer dg = upload(gb), du = upload(ub), dout(static_cast<size_t>(n) * 2);
    dout.fill(0xff);
    swiglu_cuda(dg.as<uint16_t>(), du.as<uint16_t>(), dout.as<uint16_t>(), n, nullptr);
    cuda_sync(nullptr);
    const auto got = download(dout, static_cast<size_t>(n));
    compare(got, want, worst);
    swiglu_cuda(dg.as<uint16_t>(), du.as<uint16_t>(), dg.as<uint16_t>(), n, nullptr);  // out aliases gate
    cuda_sync(nullptr);
    CHECK(download(dg, static_cast<size_t>(n)) == got);
  }
  struct shape {
    int64_t rows, inter;
  };
  for (const shape sh : {shape{1, 14336}, shape{7, 14336}, shape{5, 100}, shape{3, 37}, shape{64, 1024}}) {
    CAPTURE(sh.rows);
    CAPTURE(sh.inter);
    const size_t n = static_cast<size_t>(sh.rows * sh.inter);
    std::vector<float> gu = troupe_test::random_floats(2 * n, 13 + sh.inter, 2.0f);
    const auto gub = to_bf16(gu);
    std::vector<float> g(n), u(n), want(n);
    for (int64_t r = 0; r < sh.rows; ++r)
      for (int64_t j = 0; j < sh.inter; ++j) {
        g[static_cast<size_t>(r * sh.inter + j)] = gu[static_cast<size_t>(r * 2 * sh.inter + j)];
        u[static_cast<size_t>(r * sh.inter + j)] = gu[static_cast<size_t>(r * 2 * sh.inter + sh.inter + j)];
      }
    swiglu(g.data(), u.data(), want.data(), static_cast<int64_t>(n));
    device_buffer dgu = upload(gub), dout(n * 2);
    dout.fill(0xff);
    swiglu_fused_cuda(dgu.as<uint16_t>(), sh.rows, sh.inter, dout.as<uint16_t>(), nullptr);
    cuda_sync(nullptr);
    compare(download(dout, n), want, worst);
  }
  MESSAGE("swiglu max norm-relative error " << worst);
  CHECK_THROWS_AS(swiglu_fused_cuda(nullptr, 1, 0, nullptr, nullptr), troupe::error);
}
