// What compute devices this process can use: always the CPU, plus the CUDA
// GPUs the driver reports when troupe was built with CUDA. Commands use it to
// resolve --device and to print `troupe devices`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace troupe {

/// One compute device.
struct device_info {
  std::string kind;         ///< "cpu" or "cuda"
  int index = 0;            ///< CUDA ordinal (0 for the CPU)
  std::string name;         ///< e.g. "NVIDIA H200"
  uint64_t memory_bytes = 0;
  int compute_capability = 0;  ///< major * 10 + minor for CUDA, 0 for the CPU
  int cores = 0;            ///< CPU threads, or CUDA streaming multiprocessors
};

/// The CPU and every visible CUDA device. A CUDA runtime that fails to
/// initialise (no driver, no GPU) yields the CPU alone; `note` (optional)
/// receives the reason.
std::vector<device_info> devices_list(std::string* note = nullptr);

/// True when this build includes the CUDA backend.
bool cuda_built();

}  // namespace troupe
