// SwiGLU activation of the Llama MLP: silu(gate) * up, elementwise.
#pragma once

#include <cstdint>

namespace troupe {

/// out[i] = gate[i] / (1 + exp(-gate[i])) * up[i] for n floats; out may alias gate or up.
void swiglu(const float* gate, const float* up, float* out, int64_t n);

}  // namespace troupe
