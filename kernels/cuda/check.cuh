// The one check for CUDA runtime results and kernel launches: a failure
// becomes troupe::error(errc_cuda) naming the call, file and line, so a
// failing step fails its requests instead of killing the process.
#pragma once

#include <string>

#include <cuda_runtime.h>

#include "config/errors.hpp"

namespace troupe {

/// Throws troupe::error(errc_cuda) when `e` is not cudaSuccess.
inline void cuda_check(cudaError_t e, const char* what, const char* file, int line) {
  if (e == cudaSuccess) return;
  throw error(errc::errc_cuda, std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ") at " +
                                   file + ":" + std::to_string(line));
}

}  // namespace troupe

/// Checks a CUDA runtime call.
#define TROUPE_CUDA_CHECK(expr) ::troupe::cuda_check((expr), #expr, __FILE__, __LINE__)

/// Checks the kernel launch just made (configuration errors; not asynchronous faults).
#define TROUPE_CUDA_LAUNCH_CHECK(name) ::troupe::cuda_check(cudaGetLastError(), "launch of " name, __FILE__, __LINE__)
