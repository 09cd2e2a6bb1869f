// CUDA device enumeration; a missing driver or GPU is a note, not an error.
#include <cuda_runtime.h>

#include "kernels/device.hpp"

namespace troupe {

std::vector<device_info> cuda_devices_list(std::string* note) {
  std::vector<device_info> out;
  int n = 0;
  if (cudaError_t e = cudaGetDeviceCount(&n); e != cudaSuccess) {
    if (note != nullptr) *note = std::string("no CUDA device: ") + cudaGetErrorString(e);
    (void)cudaGetLastError();
    return out;
  }
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    device_info d;
    d.kind = "cuda";
    d.index = i;
    d.name = p.name;
    d.memory_bytes = p.totalGlobalMem;
    d.compute_capability = p.major * 10 + p.minor;
    d.cores = p.multiProcessorCount;
    out.push_back(std::move(d));
  }
  return out;
}

}  // namespace troupe
