#include "kernels/rope.hpp"

#include <doctest/doctest.h>

#include <numbers>

#include "reference.hpp"

using namespace troupe;

TEST_CASE("rope_apply: rotate_half layout, positions per token, attention scaling") {
  rope_scaling s;
  s.theta = 500.0;
  rope_table t = rope_inv_freq(s, 8, 128);
  t.attention_scaling = 1.5f;
  std::vector<float> x = troupe_test::random_floats(3 * 2 * 8, 9);
  const std::vector<float> x0 = x;
  const int32_t pos[] = {0, 7, 100};
  rope_apply(x.data(), 3, 2, 8, pos, t);
  std::vector<double> want(x.size());
  for (int tok = 0; tok < 3; ++tok)
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < 4; ++i) {
        const double ang = pos[tok] * std::pow(500.0, -2.0 * i / 8.0);
        const float* v = x0.data() + (tok * 2 + h) * 8;
        want[(tok * 2 + h) * 8 + i] = 1.5 * (v[i] * std::cos(ang) - v[i + 4] * std::sin(ang));
        want[(tok * 2 + h) * 8 + i + 4] = 1.5 * (v[i + 4] * std::cos(ang) + v[i] * std::sin(ang));
      }
  CHECK(troupe_test::rel_err(x, want) < 1e-5);
}

TEST_CASE("rope_inv_freq: scaling types change the frequencies as their definitions say") {
  rope_scaling s;
  s.theta = 10000.0;
  const rope_table base = rope_inv_freq(s, 64, 4096);
  CHECK(base.inv_freq[0] == 1.0f);
  CHECK(base.inv_freq[31] == doctest::Approx(std::pow(10000.0, -62.0 / 64.0)).epsilon(1e-6));
  s.type = rope_type::rope_linear;
  s.factor = 4.0;
  const rope_table lin = rope_inv_freq(s, 64, 4096);
  for (size_t i = 0; i < 32; ++i) CHECK(lin.inv_freq[i] == doctest::Approx(base.inv_freq[i] / 4.0f));
  // llama3: high frequencies (short wavelengths) unchanged, low ones divided by factor.
  s.type = rope_type::rope_llama3;
  s.factor = 8.0;
  s.original_max_position = 256;
  const rope_table l3 = rope_inv_freq(s, 64, 4096);
  CHECK(l3.inv_freq[0] == base.inv_freq[0]);
  CHECK(l3.inv_freq[31] == doctest::Approx(base.inv_freq[31] / 8.0f));
  // yarn: attention scaling 0.1 ln(factor) + 1 by default, or the explicit attention_factor.
  s.type = rope_type::rope_yarn;
  s.factor = 4.0;
  CHECK(rope_inv_freq(s, 64, 4096).attention_scaling == doctest::Approx(0.1 * std::log(4.0) + 1.0));
  s.attention_factor = 0.7;
  CHECK(rope_inv_freq(s, 64, 4096).attention_scaling == doctest::Approx(0.7));
}
