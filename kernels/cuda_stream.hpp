// The CUDA stream type, forward-declared so that kernel headers (included by
// plain C++ code of every folder) need no CUDA header. Every CUDA launcher
// takes its stream explicitly; nullptr is the legacy default stream.
#pragma once

struct CUstream_st;

namespace troupe {

/// A CUDA stream (same type as cudaStream_t).
using cuda_stream = CUstream_st*;

}  // namespace troupe
