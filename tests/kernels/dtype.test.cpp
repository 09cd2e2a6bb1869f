#include "kernels/dtype.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>

using namespace troupe;

TEST_CASE("dtype: bf16 and f16 conversions are exact where representable and round to nearest even") {
  for (float v : {0.0f, -0.0f, 1.0f, -2.5f, 3.140625f, 65504.0f, 6.103515625e-05f, 5.9604644775390625e-08f}) {
    CHECK(f16_to_f32(f32_to_f16(v)) == v);
  }
  for (float v : {0.0f, 1.0f, -2.5f, 3.140625f, 1e30f, -1e-30f}) CHECK(bf16_to_f32(f32_to_bf16(bf16_to_f32(f32_to_bf16(v)))) == bf16_to_f32(f32_to_bf16(v)));
  CHECK(f32_to_bf16(1.0f) == 0x3f80);
  CHECK(f32_to_bf16(1.00390625f) == 0x3f80);  // halfway between 0x3f80 and 0x3f81: to even
  CHECK(f32_to_bf16(1.01171875f) == 0x3f82);  // halfway between 0x3f81 and 0x3f82: to even
  CHECK(f32_to_f16(1.0f) == 0x3c00);
  CHECK(f32_to_f16(65520.0f) == 0x7c00);  // rounds to +inf
  CHECK(std::isnan(f16_to_f32(f32_to_f16(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(std::isinf(f16_to_f32(0x7c00)));
  CHECK(f16_to_f32(0x0001) == std::ldexp(1.0f, -24));
  CHECK(f16_to_f32(0x8400) == -std::ldexp(1.0f, -14));
  CHECK(dtype_from_name("BF16") == dtype::dtype_bf16);
  CHECK_FALSE(dtype_from_name("I8").has_value());
  CHECK(std::string(dtype_name(dtype::dtype_f16)) == "F16");
}

TEST_CASE("dtype: every f16 bit pattern survives f16 -> f32 -> f16") {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    REQUIRE(f32_to_f16(f) == h);
  }
}
