// Token embedding lookup: rows of the embedding table, converted to fp32.
#pragma once

#include <cstdint>

#include "kernels/cuda_stream.hpp"
#include "kernels/dtype.hpp"

namespace troupe {

/// out[t][:] = table[ids[t]][:] for n ids; table is [vocab][dim] of type tt.
/// Ids must be in [0, vocab): the caller validates them (model::forward does).
void embedding(const int32_t* ids, int64_t n, dtype tt, const void* table, int64_t dim, float* out);

// ---- CUDA (kernels/cuda/embedding.cu; CUDA builds only) ----

/// out[t][:] = table[ids[t]][:] for n ids on stream s; every pointer is device
/// memory; table is bf16 [vocab][dim], out bf16 [n][dim] (bit copies). Ids
/// must be in [0, vocab): the caller validates them. Throws
/// error(errc_invalid_argument) for a bad shape or null pointer, error(errc_cuda)
/// when the launch fails.
void embedding_cuda(const int32_t* ids, int64_t n, const uint16_t* table, int64_t dim, uint16_t* out, cuda_stream s);

}  // namespace troupe
