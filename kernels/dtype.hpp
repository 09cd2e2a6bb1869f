// Element types of weights, activations and KV pages, and their conversions.
// The CPU backend computes in fp32 over weights stored as bf16, f16 or f32;
// conversions are bit-exact (bf16/f16 -> f32 is exact; f32 -> bf16 rounds to
// nearest even like torch).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace troupe {

/// Storage type of a tensor.
enum class dtype : uint8_t { dtype_f32, dtype_f16, dtype_bf16 };

/// Bytes per element.
constexpr size_t dtype_size(dtype t) { return t == dtype::dtype_f32 ? 4 : 2; }

/// Safetensors spelling ("F32", "F16", "BF16").
const char* dtype_name(dtype t);

/// Parses the safetensors spelling; nullopt for any other type.
std::optional<dtype> dtype_from_name(std::string_view name);

/// bf16 bits -> float (exact).
inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// float -> bf16 bits, round to nearest even; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

/// IEEE half bits -> float (exact, subnormals included).
float f16_to_f32(uint16_t h);

/// float -> IEEE half bits, round to nearest even.
uint16_t f32_to_f16(float f);

/// Converts n elements of type t at src into floats.
void convert_to_f32(dtype t, const void* src, float* dst, size_t n);

/// Converts n floats into type t at dst.
void convert_from_f32(dtype t, const float* src, void* dst, size_t n);

/// Element i of an array of type t, as float.
inline float load_f32(dtype t, const void* base, size_t i) {
  switch (t) {
    case dtype::dtype_f32: return static_cast<const float*>(base)[i];
    case dtype::dtype_bf16: return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case dtype::dtype_f16: return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
  }
  return 0.0f;
}

}  // namespace troupe
