#include "kernels/device.hpp"

#include <unistd.h>

#include <fstream>
#include <thread>

namespace troupe {

namespace {

device_info cpu_device() {
  device_info d;
  d.kind = "cpu";
  d.cores = static_cast<int>(std::thread::hardware_concurrency());
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);)
    if (line.rfind("model name", 0) == 0) {
      d.name = line.substr(line.find(':') + 2);
      break;
    }
  d.memory_bytes = static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  return d;
}

}  // namespace

#ifndef TROUPE_HAVE_CUDA
bool cuda_built() { return false; }

std::vector<device_info> devices_list(std::string* note) {
  if (note != nullptr) *note = "built without CUDA";
  return {cpu_device()};
}
#else
std::vector<device_info> cuda_devices_list(std::string* note);  // kernels/cuda/device.cu

bool cuda_built() { return true; }

std::vector<device_info> devices_list(std::string* note) {
  std::vector<device_info> all{cpu_device()};
  for (device_info& d : cuda_devices_list(note)) all.push_back(std::move(d));
  return all;
}
#endif

}  // namespace troupe
