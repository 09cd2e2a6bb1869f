// The model head for the positions whose logits are wanted: gather those
// hidden rows, apply the final RMSNorm, project onto the vocabulary. Only the
// asked-for rows pay for the (large) lm_head product.
#pragma once

#include <cstdint>

#include "kernels/matmul.hpp"

namespace troupe {

/// out[i][:] = lm_head(rmsnorm(hidden[rows[i]][:], norm, eps)) for n_rows rows;
/// hidden is [*][lm_head.cols]; out is [n_rows][lm_head.rows].
void logits_compute(const float* hidden, const int32_t* rows, int64_t n_rows, const weight_ref& norm, float eps,
                    const weight_ref& lm_head, float* out);

}  // namespace troupe
