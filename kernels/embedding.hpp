// Token embedding lookup: rows of the embedding table, converted to fp32.
#pragma once

#include <cstdint>

#include "kernels/dtype.hpp"

namespace troupe {

/// out[t][:] = table[ids[t]][:] for n ids; table is [vocab][dim] of type tt.
/// Ids must be in [0, vocab): the caller validates them (model::forward does).
void embedding(const int32_t* ids, int64_t n, dtype tt, const void* table, int64_t dim, float* out);

}  // namespace troupe
