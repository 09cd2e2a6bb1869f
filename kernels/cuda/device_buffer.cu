// device_buffer: cudaMalloc/cudaFree with checked copies.
#include "kernels/device_buffer.hpp"

#include <utility>

#include "kernels/cuda/check.cuh"

namespace troupe {

device_buffer::device_buffer(size_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
  if (cudaError_t e = cudaMalloc(&ptr_, bytes); e != cudaSuccess) {
    (void)cudaGetLastError();
    ptr_ = nullptr;
    bytes_ = 0;
    throw error(errc::errc_cuda, "cudaMalloc of " + std::to_string(bytes) + " bytes failed: " + cudaGetErrorString(e));
  }
}

device_buffer::~device_buffer() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}

device_buffer::device_buffer(device_buffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}

device_buffer& device_buffer::operator=(device_buffer&& o) noexcept {
  if (this != &o) {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

namespace {
void bounds(size_t at, size_t bytes, size_t size, const char* what) {
  if (at > size || bytes > size - at)
    throw error(errc::errc_invalid_argument, std::string("device_buffer ") + what + " of " + std::to_string(bytes) +
                                                 " bytes at " + std::to_string(at) + " exceeds its " +
                                                 std::to_string(size) + " bytes");
}
}  // namespace

void device_buffer::upload(const void* host, size_t bytes, size_t at) {
  bounds(at, bytes, bytes_, "upload");
  if (bytes) TROUPE_CUDA_CHECK(cudaMemcpy(static_cast<char*>(ptr_) + at, host, bytes, cudaMemcpyHostToDevice));
}

void device_buffer::download(void* host, size_t bytes, size_t at) const {
  bounds(at, bytes, bytes_, "download");
  if (bytes) TROUPE_CUDA_CHECK(cudaMemcpy(host, static_cast<const char*>(ptr_) + at, bytes, cudaMemcpyDeviceToHost));
}

void device_buffer::fill(int value) {
  if (bytes_) TROUPE_CUDA_CHECK(cudaMemset(ptr_, value, bytes_));
}

void cuda_sync(cuda_stream s) { TROUPE_CUDA_CHECK(cudaStreamSynchronize(s)); }

}  // namespace troupe
