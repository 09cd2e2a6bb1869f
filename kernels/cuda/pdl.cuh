// Programmatic dependent launch (Hopper): a kernel launched with launch_pdl
// may be scheduled while the previous kernel on the stream is still
// draining, so the launch latency between the many small kernels of a decode
// step (norms, rope, attention, GEMVs) overlaps the previous kernel's tail
// instead of adding to it. Correctness rests on one rule: every kernel
// launched this way calls pdl_wait() before it touches global memory that
// an earlier kernel writes or reads (griddepcontrol.wait returns once the
// previous grid has completed and its writes are visible). Kernels that wait
// first thing are always safe; the wait is a no-op when launched normally.
#pragma once

#include <utility>

#include <cuda_runtime.h>

#include "kernels/cuda/check.cuh"

namespace troupe {

/// Waits until the previous kernel on the stream has completed (PDL launches only).
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/// Launches `kernel` on `s` with programmatic stream serialization allowed;
/// the kernel must call pdl_wait() before its first global memory access
/// (see the file comment). `name` appears in the error of a failed launch.
template <class... Params, class... Args>
void launch_pdl(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                Args&&... args) {
  cudaLaunchConfig_t lc{};
  lc.gridDim = grid;
  lc.blockDim = block;
  lc.dynamicSmemBytes = smem;
  lc.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  lc.attrs = attr;
  lc.numAttrs = 1;
  cuda_check(cudaLaunchKernelEx(&lc, kernel, std::forward<Args>(args)...), name, __FILE__, __LINE__);
}

}  // namespace troupe
