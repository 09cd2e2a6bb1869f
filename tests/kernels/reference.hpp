// Random inputs and double-precision helpers shared by the kernel tests.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/dtype.hpp"

namespace troupe_test {

inline std::vector<float> random_floats(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

/// Stores v in type t (rounding) and returns the bytes plus the rounded values as float.
inline std::vector<uint8_t> store(troupe::dtype t, std::vector<float>& v) {
  std::vector<uint8_t> bytes(v.size() * troupe::dtype_size(t));
  troupe::convert_from_f32(t, v.data(), bytes.data(), v.size());
  troupe::convert_to_f32(t, bytes.data(), v.data(), v.size());
  return bytes;
}

inline double rel_err(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / den);
}

}  // namespace troupe_test
