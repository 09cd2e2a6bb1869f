// What the GPU transfer engines share: the non-throwing check macros of the
// data plane (a failed CUDA or NCCL call on a transfer fails that transfer,
// logged with the call, file and line; start-up uses TROUPE_CUDA_CHECK from
// kernels/cuda/check.cuh, which throws) and a guard that makes the engine's
// device current on a caller's thread and restores the caller's afterwards.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "kernels/cuda/check.cuh"
#include "transport/transfer_engine_util.hpp"

namespace troupe::te_cuda {

/// Logs a failed CUDA call with file:line; true when it succeeded.
inline bool cuda_ok(cudaError_t e, const char* what, const char* file, int line) {
  if (e == cudaSuccess) return true;
  te_util::log()->error("{}: {} ({}) at {}:{}", what, cudaGetErrorName(e), cudaGetErrorString(e), file, line);
  return false;
}

/// Makes `device` current for a scope; the caller's device comes back after.
class device_scope {
 public:
  explicit device_scope(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    if (previous_ != device) cudaSetDevice(device);
  }
  ~device_scope() {
    int now = -1;
    if (previous_ >= 0 && cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
  }
  device_scope(const device_scope&) = delete;
  device_scope& operator=(const device_scope&) = delete;

 private:
  int previous_ = -1;
};

}  // namespace troupe::te_cuda

/// Runs a CUDA call of the data plane; evaluates to true when it succeeded,
/// else logs it with file:line and evaluates to false.
#define TROUPE_TE_CUDA_OK(expr) ::troupe::te_cuda::cuda_ok((expr), #expr, __FILE__, __LINE__)
