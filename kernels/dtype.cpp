#include "kernels/dtype.hpp"

#include <cmath>

namespace troupe {

const char* dtype_name(dtype t) {
  switch (t) {
    case dtype::dtype_f32: return "F32";
    case dtype::dtype_f16: return "F16";
    case dtype::dtype_bf16: return "BF16";
  }
  return "?";
}

std::optional<dtype> dtype_from_name(std::string_view name) {
  if (name == "F32") return dtype::dtype_f32;
  if (name == "F16") return dtype::dtype_f16;
  if (name == "BF16") return dtype::dtype_bf16;
  return std::nullopt;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: value = mant * 2^-24
      float f = std::ldexp(static_cast<float>(mant), -24);
      std::memcpy(&bits, &f, 4);
      bits |= sign;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;            // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;           // overflow (incl. inf)
  if (abs < 0x38800000u) {                                 // subnormal or zero in half
    float a;
    std::memcpy(&a, &abs, 4);
    float scaled = a * 16777216.0f;  // 2^24: half subnormal units, exact for these inputs
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  return sign | static_cast<uint16_t>((rounded - (112u << 23)) >> 13);
}

void convert_to_f32(dtype t, const void* src, float* dst, size_t n) {
  switch (t) {
    case dtype::dtype_f32: std::memcpy(dst, src, n * 4); return;
    case dtype::dtype_bf16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case dtype::dtype_f16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
  }
}

void convert_from_f32(dtype t, const float* src, void* dst, size_t n) {
  switch (t) {
    case dtype::dtype_f32: std::memcpy(dst, src, n * 4); return;
    case dtype::dtype_bf16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case dtype::dtype_f16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
  }
}

}  // namespace troupe
