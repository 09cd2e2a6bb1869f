// SwiGLU activation of the Llama MLP: silu(gate) * up, elementwise.
#pragma once

#include <cstdint>

#include "kernels/cuda_stream.hpp"

namespace troupe {

/// out[i] = gate[i] / (1 + exp(-gate[i])) * up[i] for n floats; out may alias gate or up.
void swiglu(const float* gate, const float* up, float* out, int64_t n);

// ---- CUDA (kernels/cuda/swiglu.cu; CUDA builds only) ----
// bf16 storage, fp32 math (g / (1 + exp(-g)) * u, as the CPU twin), one
// rounding per output. Pointers are device memory.

/// out[i] = silu(gate[i]) * up[i] for n bf16 elements on stream s; out may
/// alias gate or up. Throws error(errc_invalid_argument) for a bad argument,
/// error(errc_cuda) on launch failure.
void swiglu_cuda(const uint16_t* gate, const uint16_t* up, uint16_t* out, int64_t n, cuda_stream s);

/// The fused gate|up layout of one GEMM with the gate and up projections
/// stacked ([gate_proj; up_proj] as W rows): gate_up is bf16 [rows][2 * inter],
/// row r holding gate in columns [0, inter) and up in [inter, 2 * inter).
/// out[r][j] = silu(gate_up[r][j]) * gate_up[r][inter + j], out bf16
/// [rows][inter] (must not overlap gate_up).
void swiglu_fused_cuda(const uint16_t* gate_up, int64_t rows, int64_t inter, uint16_t* out, cuda_stream s);

}  // namespace troupe
