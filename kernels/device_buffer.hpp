// One allocation of GPU memory, owned (move-only, freed in the destructor),
// with synchronous copies to and from the host. The CUDA backend's weight
// arena, KV pages and activations are device_buffers; declared in plain C++
// so that model code can hold them without CUDA headers. Defined only in
// CUDA builds (kernels/cuda/device_buffer.cu).
#pragma once

#include <cstddef>

#include "kernels/cuda_stream.hpp"

namespace troupe {

/// Owned GPU memory on the current device.
class device_buffer {
 public:
  device_buffer() = default;
  /// cudaMalloc of `bytes` (0 allocates nothing); throws error(errc_cuda) naming the size when it fails.
  explicit device_buffer(size_t bytes);
  ~device_buffer();
  device_buffer(device_buffer&& o) noexcept;
  device_buffer& operator=(device_buffer&& o) noexcept;
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;

  /// Device pointer (nullptr when empty).
  void* data() const { return ptr_; }
  /// Typed device pointer.
  template <class T>
  T* as() const { return static_cast<T*>(ptr_); }
  /// Size in bytes.
  size_t size() const { return bytes_; }

  /// Copies `bytes` from host memory to offset `at` (synchronous; bounds checked).
  void upload(const void* host, size_t bytes, size_t at = 0);
  /// Copies `bytes` from offset `at` into host memory (synchronous; bounds checked).
  void download(void* host, size_t bytes, size_t at = 0) const;
  /// Sets every byte to `value` (synchronous).
  void fill(int value);

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

/// Waits for all work on `s` and throws error(errc_cuda) for an asynchronous fault.
void cuda_sync(cuda_stream s);

}  // namespace troupe
