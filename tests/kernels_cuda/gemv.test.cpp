// The decode GEMV kernels (kernels/gemv.hpp) against the CPU matmul (fp32
// over the same bf16 values), and the fused SwiGLU one against matmul
// followed by silu(gate) * up. Criterion for bf16 outputs: norm-relative
// error <= 1e-2 and per element |got - ref| <= 1e-2 * |ref| + 1e-2 * rms(ref);
// fp32 outputs (only the summation order differs) 1e-4 and 1e-3 * |ref| +
// 1e-4 * rms(ref). Outputs start as NaN and sit between NaN guard rows, so
// every element must be written and nothing past the end. Shapes cover odd
// n, k not a multiple of the 32-wide step, m = 1..16, bias or none, every
// kernel configuration, the dispatch inside gemm_bf16 / gemm_f32_context,
// a CUDA graph and programmatic dependent launch.
#include "kernels/gemv.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include <cuda_runtime.h>

#include "config/errors.hpp"
#include "kernels/device_buffer.hpp"
#include "kernels/gemm.hpp"
#include "kernels/gemm_f32.hpp"
#include "kernels/matmul.hpp"
#include "tests/kernels/reference.hpp"

using namespace troupe;

namespace {

constexpr size_t kGuard = 64;  // NaN elements before and after every output

std::vector<uint16_t> to_bf16(std::vector<float>& v) {  // rounds v in place, returns the bits
  std::vector<uint16_t> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    b[i] = f32_to_bf16(v[i]);
    v[i] = bf16_to_f32(b[i]);
  }
  return b;
}

template <class T>
device_buffer upload(const std::vector<T>& h) {
  device_buffer d(h.size() * sizeof(T));
  d.upload(h.data(), d.size());
  return d;
}

// An output of `n` elements of T between guards, all bytes 0xff (NaN).
template <class T>
struct guarded {
  device_buffer buf;
  size_t n;
  explicit guarded(size_t n_) : buf((n_ + 2 * kGuard) * sizeof(T)), n(n_) { poison(); }
  void poison() { buf.fill(0xff); }
  T* out() const { return buf.as<T>() + kGuard; }
  // The output; checks the guards are untouched.
  std::vector<T> get() const {
    std::vector<T> h(n + 2 * kGuard);
    buf.download(h.data(), buf.size());
    size_t touched = 0;
    for (size_t i = 0; i < kGuard; ++i) {
      T a = h[i], b = h[kGuard + n + i], all;
      std::memset(&all, 0xff, sizeof all);
      touched += std::memcmp(&a, &all, sizeof a) != 0;
      touched += std::memcmp(&b, &all, sizeof b) != 0;
    }
    CHECK(touched == 0);
    return std::vector<T>(h.begin() + kGuard, h.begin() + static_cast<std::ptrdiff_t>(kGuard + n));
  }
};

float value(uint16_t b) { return bf16_to_f32(b); }
float value(float f) { return f; }

template <class T>
void compare(const std::vector<T>& got, const std::vector<float>& ref, double rel_tol, double elem_tol,
             double& worst) {
  double num = 0, den = 0, max_abs = 0;
  size_t nan = 0, bad = 0;
  for (float r : ref) den += double(r) * r;
  const double rms = std::sqrt(den / double(ref.size()));
  for (size_t i = 0; i < got.size(); ++i) {
    const float g = value(got[i]);
    if (std::isnan(g)) {
      ++nan;
      continue;
    }
    const double e = std::fabs(double(g) - ref[i]);
    num += e * e;
    max_abs = std::max(max_abs, e);
    if (e > elem_tol * std::fabs(ref[i]) + rel_tol * rms) ++bad;
  }
  const double rel = std::sqrt(num / den);
  worst = std::max(worst, rel);
  CAPTURE(max_abs);
  CAPTURE(rel);
  CHECK(nan == 0);
  CHECK(bad == 0);
  CHECK(rel <= rel_tol);
}

void compare_bf16(const std::vector<uint16_t>& got, const std::vector<float>& ref, double& worst) {
  compare(got, ref, 1e-2, 1e-2, worst);
}

void compare_f32(const std::vector<float>& got, const std::vector<float>& ref, double& worst) {
  compare(got, ref, 1e-4, 1e-3, worst);
}

// One random problem: x [m][k], w [rows][k], bias [rows], rounded to bf16,
// on the host (as floats) and on the device.
struct problem {
  int64_t m, rows, k;
  std::vector<float> x, w, b;
  device_buffer dx, dw, db;
  problem(int64_t m_, int64_t rows_, int64_t k_, uint64_t seed) : m(m_), rows(rows_), k(k_) {
    x = troupe_test::random_floats(static_cast<size_t>(m * k), seed);
    w = troupe_test::random_floats(static_cast<size_t>(rows * k), seed + 1, 0.05f);
    b = troupe_test::random_floats(static_cast<size_t>(rows), seed + 2);
    dx = upload(to_bf16(x));
    dw = upload(to_bf16(w));
    db = upload(to_bf16(b));
  }
  const uint16_t* xp() const { return dx.as<uint16_t>(); }
  const uint16_t* wp() const { return dw.as<uint16_t>(); }
  const uint16_t* bp(bool with_bias) const { return with_bias ? db.as<uint16_t>() : nullptr; }
  // CPU y [m][rows] = x w^T (+ b).
  std::vector<float> ref(bool with_bias) const {
    std::vector<float> y(static_cast<size_t>(m * rows));
    std::vector<uint16_t> wb(w.size()), bb(b.size());
    for (size_t i = 0; i < w.size(); ++i) wb[i] = f32_to_bf16(w[i]);
    for (size_t i = 0; i < b.size(); ++i) bb[i] = f32_to_bf16(b[i]);
    const weight_ref wr{dtype::dtype_bf16, wb.data(), rows, k};
    const weight_ref br{dtype::dtype_bf16, bb.data(), 1, rows};
    matmul(x.data(), m, wr, with_bias ? &br : nullptr, y.data());
    return y;
  }
};

// CPU act [m][inter] = silu(gate) * up from the fused product [m][2 * inter].
std::vector<float> swiglu_ref(const std::vector<float>& gu, int64_t m, int64_t inter) {
  std::vector<float> act(static_cast<size_t>(m * inter));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < inter; ++j) {
      const float g = gu[static_cast<size_t>(i * 2 * inter + j)], u = gu[static_cast<size_t>(i * 2 * inter + inter + j)];
      act[static_cast<size_t>(i * inter + j)] = g / (1.0f + std::exp(-g)) * u;
    }
  return act;
}

struct nk {
  int64_t n, k;
};

}  // namespace

TEST_CASE("gemv_bf16 matches the CPU matmul for m = 1..16, odd n, k not a multiple of 32, bias or none") {
  double worst = 0;
  // (13, 8): k below one step; (33, 14336): many k iterations per warp.
  for (const nk s : {nk{999, 336}, nk{130, 8}, nk{17, 1000}, nk{3000, 2056}, nk{33, 14336}, nk{6144, 4096}}) {
    for (int64_t m = 1; m <= gemv_max_m; ++m) {
      const bool with_bias = (m + s.n) % 2 == 0;
      CAPTURE(m);
      CAPTURE(s.n);
      CAPTURE(s.k);
      CAPTURE(with_bias);
      const problem p(m, s.n, s.k, static_cast<uint64_t>(100 * m + s.k));
      guarded<uint16_t> y(static_cast<size_t>(m * s.n));
      gemv_bf16(p.xp(), m, s.k, p.wp(), s.n, p.bp(with_bias), y.out(), nullptr);
      cuda_sync(nullptr);
      compare_bf16(y.get(), p.ref(with_bias), worst);
    }
  }
  MESSAGE("gemv_bf16 max norm-relative error " << worst);
}

TEST_CASE("every gemv configuration computes the same function (bf16, fp32 and SwiGLU outputs)") {
  double worst = 0;
  for (int c = 0; c < gemv_config_count(); ++c)
    for (const int64_t m : {int64_t{1}, int64_t{5}, int64_t{8}, int64_t{9}, int64_t{16}}) {
      CAPTURE(gemv_config_name(c));
      CAPTURE(m);
      gemv_options opt;
      opt.config = c;
      const int64_t n = 271, k = 1064;
      const problem p(m, n, k, static_cast<uint64_t>(7 * c + m));
      const bool with_bias = (c + m) % 2 == 1;
      const std::vector<float> want = p.ref(with_bias);
      guarded<uint16_t> y(static_cast<size_t>(m * n));
      gemv_bf16(p.xp(), m, k, p.wp(), n, p.bp(with_bias), y.out(), nullptr, opt);
      guarded<float> y32(static_cast<size_t>(m * n));
      gemv_bf16_f32(p.xp(), m, k, p.wp(), n, p.bp(with_bias), y32.out(), nullptr, opt);
      cuda_sync(nullptr);
      compare_bf16(y.get(), want, worst);
      compare_f32(y32.get(), want, worst);
      if (gemv_config_has_swiglu(c)) {
        const int64_t inter = n / 2;  // w rows = 2 * inter + 1: the last row must be ignored
        guarded<uint16_t> act(static_cast<size_t>(m * inter));
        gemv_swiglu_bf16(p.xp(), m, k, p.wp(), inter, p.bp(with_bias), act.out(), nullptr, opt);
        cuda_sync(nullptr);
        std::vector<float> gu(static_cast<size_t>(m * 2 * inter));
        for (int64_t i = 0; i < m; ++i)
          std::copy_n(want.begin() + i * n, 2 * inter, gu.begin() + i * 2 * inter);
        compare_bf16(act.get(), swiglu_ref(gu, m, inter), worst);
      } else {
        CHECK_THROWS_AS(gemv_swiglu_bf16(p.xp(), m, k, p.wp(), n / 2, nullptr, y.out(), nullptr, opt), troupe::error);
      }
    }
  MESSAGE("gemv configurations max norm-relative error " << worst);
}

TEST_CASE("gemv_bf16_f32 (fp32 logits) matches the CPU matmul") {
  double worst = 0;
  for (const nk s : {nk{1001, 512}, nk{5000, 2048}, nk{7, 88}})
    for (const int64_t m : {int64_t{1}, int64_t{3}, int64_t{8}, int64_t{12}, int64_t{16}}) {
      CAPTURE(m);
      CAPTURE(s.n);
      const problem p(m, s.n, s.k, static_cast<uint64_t>(300 + m + s.n));
      guarded<float> y(static_cast<size_t>(m * s.n));
      gemv_bf16_f32(p.xp(), m, s.k, p.wp(), s.n, nullptr, y.out(), nullptr);
      cuda_sync(nullptr);
      compare_f32(y.get(), p.ref(false), worst);
    }
  MESSAGE("gemv_bf16_f32 max norm-relative error " << worst);
}

TEST_CASE("gemv_swiglu_bf16 equals the fused gate|up product followed by silu(gate) * up") {
  double worst = 0;
  for (const nk s : {nk{333, 200}, nk{1000, 512}, nk{2048, 1024}, nk{5, 16}})
    for (int64_t m = 1; m <= gemv_max_m; m += (m < 4 ? 1 : 3)) {
      const bool with_bias = m % 2 == 0;
      const int64_t inter = s.n;
      CAPTURE(m);
      CAPTURE(inter);
      CAPTURE(with_bias);
      const problem p(m, 2 * inter, s.k, static_cast<uint64_t>(500 + m + inter));
      guarded<uint16_t> act(static_cast<size_t>(m * inter));
      gemv_swiglu_bf16(p.xp(), m, s.k, p.wp(), inter, p.bp(with_bias), act.out(), nullptr);
      cuda_sync(nullptr);
      compare_bf16(act.get(), swiglu_ref(p.ref(with_bias), m, inter), worst);
    }
  MESSAGE("gemv_swiglu_bf16 max norm-relative error " << worst);
}

TEST_CASE("gemm_bf16 and gemm_f32_context route small m to the gemv, the rest to cuBLASLt") {
  double worst = 0;
  gemm_context ctx;
  gemm_f32_context ctx32;
  for (const int64_t m : {int64_t{1}, int64_t{4}, gemm_gemv_max_m, gemm_gemv_max_m + 1}) {
    CAPTURE(m);
    const int64_t n = 1031, k = 1024;
    const problem p(m, n, k, static_cast<uint64_t>(700 + m));
    const std::vector<float> want = p.ref(true), want_nb = p.ref(false);
    const size_t before = ctx.cached_shapes();
    guarded<uint16_t> y(static_cast<size_t>(m * n));
    gemm_bf16(ctx, p.xp(), m, k, p.wp(), n, p.bp(true), y.out(), nullptr);
    cuda_sync(nullptr);
    compare_bf16(y.get(), want, worst);
    // cuBLASLt caches an algorithm per shape; the GEMV path has no state.
    CHECK(ctx.cached_shapes() == before + (m <= gemm_gemv_max_m ? 0 : 1));
    guarded<float> y32(static_cast<size_t>(m * n));
    ctx32.run(p.xp(), m, k, p.wp(), n, y32.out(), nullptr);
    cuda_sync(nullptr);
    compare_f32(y32.get(), want_nb, worst);
  }
  // Forced cuBLASLt at m = 2: caches a shape, same function.
  {
    const problem p(2, 515, 256, 801);
    ctx.set_path(gemm_path::gemm_path_cublaslt);
    const size_t before = ctx.cached_shapes();
    guarded<uint16_t> y(2 * 515);
    gemm_bf16(ctx, p.xp(), 2, 256, p.wp(), 515, nullptr, y.out(), nullptr);
    cuda_sync(nullptr);
    CHECK(ctx.cached_shapes() == before + 1);
    compare_bf16(y.get(), p.ref(false), worst);
    ctx32.set_path(gemm_path::gemm_path_cublaslt);
    guarded<float> y32(2 * 515);
    ctx32.run(p.xp(), 2, 256, p.wp(), 515, y32.out(), nullptr);
    cuda_sync(nullptr);
    compare_f32(y32.get(), p.ref(false), worst);
  }
  {
    // k % 8 != 0: auto falls back to cuBLASLt, a forced gemv refuses.
    const problem p(3, 64, 335, 802);
    ctx.set_path(gemm_path::gemm_path_auto);
    guarded<uint16_t> y(3 * 64);
    gemm_bf16(ctx, p.xp(), 3, 335, p.wp(), 64, p.bp(true), y.out(), nullptr);
    cuda_sync(nullptr);
    compare_bf16(y.get(), p.ref(true), worst);
    ctx.set_path(gemm_path::gemm_path_gemv);
    CHECK_THROWS_AS(gemm_bf16(ctx, p.xp(), 3, 335, p.wp(), 64, nullptr, y.out(), nullptr), troupe::error);
    ctx32.set_path(gemm_path::gemm_path_gemv);
    guarded<float> y32(3 * 64);
    CHECK_THROWS_AS(ctx32.run(p.xp(), 3, 335, p.wp(), 64, y32.out(), nullptr), troupe::error);
  }
  MESSAGE("gemm dispatch max norm-relative error " << worst);
}

TEST_CASE("gemv kernels chained in a CUDA graph with programmatic dependent launch") {
  // x -> y1 = x W1^T -> act = swiglu(y1 Wgu^T) -> y2 = act W2^T (+b2): every
  // kernel reads what the one before wrote, so an early read of x would show.
  const int64_t m = 5, k = 512, n1 = 768, inter = 1000, n2 = 640;
  problem p1(m, n1, k, 901), pgu(m, 2 * inter, n1, 902), p2(m, n2, inter, 903);
  device_buffer y1(static_cast<size_t>(m * n1) * 2), act(static_cast<size_t>(m * inter) * 2);
  guarded<uint16_t> y2(static_cast<size_t>(m * n2));
  gemv_options opt;
  opt.pdl = true;
  cudaStream_t s = nullptr;
  REQUIRE(cudaStreamCreate(&s) == cudaSuccess);
  auto chain = [&] {
    gemv_bf16(p1.xp(), m, k, p1.wp(), n1, nullptr, y1.as<uint16_t>(), s, opt);
    gemv_swiglu_bf16(y1.as<uint16_t>(), m, n1, pgu.wp(), inter, nullptr, act.as<uint16_t>(), s, opt);
    gemv_bf16(act.as<uint16_t>(), m, inter, p2.wp(), n2, p2.bp(true), y2.out(), s, opt);
  };
  // CPU: the same chain, rounding each intermediate to bf16 as the GPU stores it.
  auto round = [](std::vector<float> v) {
    for (float& f : v) f = bf16_to_f32(f32_to_bf16(f));
    return v;
  };
  std::vector<float> h1 = round(p1.ref(false));
  std::vector<uint16_t> gw(pgu.w.size());
  for (size_t i = 0; i < gw.size(); ++i) gw[i] = f32_to_bf16(pgu.w[i]);
  std::vector<float> gu(static_cast<size_t>(m * 2 * inter));
  const weight_ref gwr{dtype::dtype_bf16, gw.data(), 2 * inter, n1};
  matmul(h1.data(), m, gwr, nullptr, gu.data());
  std::vector<float> hact = round(swiglu_ref(gu, m, inter));
  std::vector<uint16_t> w2(p2.w.size()), b2(p2.b.size());
  for (size_t i = 0; i < w2.size(); ++i) w2[i] = f32_to_bf16(p2.w[i]);
  for (size_t i = 0; i < b2.size(); ++i) b2[i] = f32_to_bf16(p2.b[i]);
  const weight_ref w2r{dtype::dtype_bf16, w2.data(), n2, inter};
  const weight_ref b2r{dtype::dtype_bf16, b2.data(), 1, n2};
  std::vector<float> want(static_cast<size_t>(m * n2));
  matmul(hact.data(), m, w2r, &b2r, want.data());

  double worst = 0;
  chain();  // on the stream
  cuda_sync(s);
  compare_bf16(y2.get(), want, worst);

  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess);
  chain();
  REQUIRE(cudaStreamEndCapture(s, &graph) == cudaSuccess);
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  for (int rep = 0; rep < 3; ++rep) {
    y1.fill(0xff);
    act.fill(0xff);
    y2.poison();
    REQUIRE(cudaGraphLaunch(exec, s) == cudaSuccess);
    cuda_sync(s);
    compare_bf16(y2.get(), want, worst);
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
  MESSAGE("gemv chain (graph, PDL) max norm-relative error " << worst);
}

TEST_CASE("gemv refuses what it cannot run, naming it") {
  const problem p(2, 16, 64, 950);
  device_buffer y(17 * 16 * 4);
  uint16_t* yo = y.as<uint16_t>();
  CHECK_THROWS_AS(gemv_bf16(p.xp(), 0, 64, p.wp(), 16, nullptr, yo, nullptr), troupe::error);
  CHECK_THROWS_AS(gemv_bf16(p.xp(), 17, 64, p.wp(), 16, nullptr, yo, nullptr), troupe::error);
  CHECK_THROWS_AS(gemv_bf16(p.xp(), 2, 60, p.wp(), 16, nullptr, yo, nullptr), troupe::error);  // k % 8
  CHECK_THROWS_AS(gemv_bf16(p.xp() + 1, 1, 56, p.wp(), 16, nullptr, yo, nullptr), troupe::error);  // x alignment
  CHECK_THROWS_AS(gemv_bf16(p.xp(), 2, 64, p.wp(), 16, nullptr, nullptr, nullptr), troupe::error);
  CHECK_THROWS_AS(gemv_swiglu_bf16(p.xp(), 2, 64, p.wp(), 0, nullptr, yo, nullptr), troupe::error);
  gemv_options bad;
  bad.config = gemv_config_count();
  CHECK_THROWS_AS(gemv_bf16(p.xp(), 2, 64, p.wp(), 16, nullptr, yo, nullptr, bad), troupe::error);
  CHECK(!gemv_supported(p.xp(), 2, 64, p.wp() + 4, 16));
  CHECK(gemv_supported(p.xp(), 2, 64, p.wp(), 16));
  bool threw = false;
  try {
    gemv_bf16(p.xp(), 2, 60, p.wp(), 16, nullptr, yo, nullptr);
  } catch (const troupe::error& e) {
    threw = true;
    CHECK(std::string(e.what()).find("k a positive multiple of 8") != std::string::npos);
    CHECK(e.code() == errc::errc_invalid_argument);
  }
  CHECK(threw);
}
