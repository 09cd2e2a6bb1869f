// Paged attention on the GPU for any head_dim up to 256: the fallback of the
// CUDA model where the tensor-core kernels (head_dim 64 and 128) do not apply,
// e.g. the tiny test fixtures (head_dim 16, 32). One warp per (query, head),
// online softmax in fp32, keys read straight from the pages. Correct, not
// fast: no K/V reuse across the heads of a group. CPU twin: attention_paged.
#pragma once

#include <cstdint>

#include "kernels/attention.hpp"
#include "kernels/cuda_stream.hpp"

namespace troupe {

// ---- CUDA (kernels/cuda/attention_generic.cu; CUDA builds only) ----

/// The semantics of attention_prefill_cuda (cu_seqlens_q, q_pos0, kv_lens,
/// block_table of `b` all read on the device; causal bottom-right, sliding
/// window, GQA) for head_dim <= 256. A sequence with kv_lens[i] <= 0 gets
/// zeros. `max_q_len` (>= every chunk's length) sizes the grid. Throws
/// error(errc_invalid_argument) for a bad argument, error(errc_cuda) when the
/// launch fails.
void attention_generic_cuda(const attention_batch_cuda& b, const paged_kv& kv, int64_t max_q_len, cuda_stream s);

}  // namespace troupe
